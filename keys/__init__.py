"""Key material, join tokens and the broker<->hostd wire protocol shared by both sides."""
