"""The local stack: Google's emulators, fake-gcs-server and the functions, as child processes."""
