//go:build ignore

/*
 * dirty: a batch job that keeps rewriting a large buffer (the worst case
 * for pre-copy migration) and checks its own work. Every pass writes the
 * pass number into every 64-bit word of the buffer, then verifies the
 * previous pass left every word as expected. It prints one line per
 * pass: "dirty: pass N ok" or "dirty: pass N CORRUPT at word W".
 *
 * usage: dirty [MiB]   (default 256)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 256;
	size_t words = mib * 1024 * 1024 / sizeof(uint64_t);
	uint64_t *buf = malloc(words * sizeof(uint64_t));
	if (buf == NULL) {
		perror("dirty: malloc");
		return 1;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (uint64_t pass = 1;; pass++) {
		for (size_t i = 0; i < words; i++) {
			if (pass > 1 && buf[i] != ((pass - 1) ^ i)) {
				printf("dirty: pass %llu CORRUPT at word %zu\n", (unsigned long long)pass, i);
				return 2;
			}
			buf[i] = pass ^ i;
		}
		printf("dirty: pass %llu ok\n", (unsigned long long)pass);
	}
}
