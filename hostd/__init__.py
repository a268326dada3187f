"""shellrent hostd: serves rentals in Docker containers on a provider's machine."""
