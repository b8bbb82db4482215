package policy

// CheckImageFile checks a base image a seed registers for fan-out: a
// regular file inside one of the image directories.
func (p *Policy) CheckImageFile(path string) error {
	return p.checkFile("path", path, p.ImageDirs, "image")
}
