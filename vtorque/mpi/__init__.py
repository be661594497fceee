"""mpi layer (see ARCHITECTURE.md)."""
