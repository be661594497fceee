"""prologue layer (see ARCHITECTURE.md)."""
