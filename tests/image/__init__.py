"""The image test: every Cloud Run service as a container of the image, against the emulators."""
