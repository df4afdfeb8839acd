"""Small helpers for files a command writes (output folders, file modes)."""
