"""Reading and writing files: atomic writes (with the user's umask), JSON export, checkpoint files,
output-folder checks."""
