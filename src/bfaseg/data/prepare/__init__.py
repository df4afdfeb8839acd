"""Converters from the public raw releases to the community h5 layouts (``bfaseg prepare``).

* :func:`prepare_la` - 2018 LA challenge (``<ID>/lgemri.nrrd`` + ``laendo.nrrd``)
  -> ``2018LA_Seg_Training Set/<ID>/mri_norm2.h5`` + ``train.list`` / ``test.list``
* :func:`prepare_pancreas` - NIH Pancreas-CT (DICOM series or NIfTI + ``label<NNNN>.nii.gz``)
  -> ``Pancreas_h5/<case>_norm.h5`` + ``train.list`` / ``test.list``
* :func:`prepare_acdc` - ACDC NIfTI release -> ``data/slices/<case>_slice_<k>.h5``,
  ``data/<case>.h5`` + ``train_slices.list`` / ``val.list`` / ``test.list``

Every converter writes each file atomically (temporary file in the same folder, then
``os.replace``), re-opens every written file at the end to check keys, dtypes, shapes and
label values, and returns a :class:`PrepareSummary`. All of it happens in a hidden staging
folder inside ``out`` whose files move in only when every case converted and passed the check
(``common.staged``): a bad scan half-way leaves nothing of the cases before it.
"""

from bfaseg.data.prepare.acdc import prepare_acdc
from bfaseg.data.prepare.common import PrepareSummary
from bfaseg.data.prepare.la import prepare_la
from bfaseg.data.prepare.pancreas import prepare_pancreas

__all__ = ["PrepareSummary", "prepare_acdc", "prepare_la", "prepare_pancreas"]
