"""Reading and writing files: atomic writes, JSON export, checkpoint files."""
