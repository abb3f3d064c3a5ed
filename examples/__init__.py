"""Examples of apps that use Relay; each folder has a README.md."""
