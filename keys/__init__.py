"""Key material: the SSH keys both sides keep (material) and the broker's join tokens (tokens)."""
