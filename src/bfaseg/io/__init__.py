"""Reading and writing files: h5 (``h5``), NIfTI (``nifti`` reading, ``nifti_write``), the geometry
record of a case and the way back to its source grid (``geometry``), the one resampler
(``resample``), the label-map check (``labels``), atomic writes with the user's umask and JSON export
(``files``), checkpoint files (``checkpoint``), output-folder checks (``output``)."""
