"""ibverbs layer (see ARCHITECTURE.md)."""
