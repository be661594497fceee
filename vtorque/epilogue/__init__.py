"""epilogue layer (see ARCHITECTURE.md)."""
