"""batch layer (see ARCHITECTURE.md)."""
