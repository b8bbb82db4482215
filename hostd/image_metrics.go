package hostd

import "github.com/prometheus/client_golang/prometheus"

// imageCollector reports each image's cache counters at scrape time.
type imageCollector struct{ h *Host }

var (
	imageServedDesc = prometheus.NewDesc("symvirt_hostd_image_served_bytes_total",
		"Bytes of an image's chunks this host served to peer hosts.", []string{"image"}, nil)
	imageFetchedDesc = prometheus.NewDesc("symvirt_hostd_image_fetched_bytes_total",
		"Bytes of an image's chunks this host fetched from its sources.", []string{"image"}, nil)
	imageHeldDesc = prometheus.NewDesc("symvirt_hostd_image_chunks_held",
		"Chunks of an image this host holds.", []string{"image"}, nil)
	imageRejectedDesc = prometheus.NewDesc("symvirt_hostd_image_rejected_chunks_total",
		"Chunks a source served that did not match the image's manifest.", []string{"image"}, nil)
	imageFailoverDesc = prometheus.NewDesc("symvirt_hostd_image_source_failovers_total",
		"Times a source failed and the next one (an ancestor or a replica) was asked.", []string{"image"}, nil)
)

func (imageCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{imageServedDesc, imageFetchedDesc, imageHeldDesc, imageRejectedDesc, imageFailoverDesc} {
		ch <- d
	}
}

func (c imageCollector) Collect(ch chan<- prometheus.Metric) {
	for _, img := range c.h.Images() {
		ch <- prometheus.MustNewConstMetric(imageServedDesc, prometheus.CounterValue, float64(img.Served), img.Name)
		ch <- prometheus.MustNewConstMetric(imageFetchedDesc, prometheus.CounterValue, float64(img.Fetched), img.Name)
		ch <- prometheus.MustNewConstMetric(imageHeldDesc, prometheus.GaugeValue, float64(img.Held), img.Name)
		ch <- prometheus.MustNewConstMetric(imageRejectedDesc, prometheus.CounterValue, float64(img.Rejected), img.Name)
		ch <- prometheus.MustNewConstMetric(imageFailoverDesc, prometheus.CounterValue, float64(img.Failovers), img.Name)
	}
}
