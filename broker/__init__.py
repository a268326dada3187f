"""shellrent broker: renter SSH front door, host tunnels, store."""
