"""Data I/O: volumes, loaders and the dataset registry.

* :mod:`~episodes.data.volumes`: :class:`~episodes.data.volumes.Volume`, NIfTI reading/writing.
* :mod:`~episodes.data.loaders`: folders of NIfTI / PNG scans; :mod:`~episodes.data.dicom`: DICOM.
* :mod:`~episodes.data.datasets`: the dataset registry (``load_dataset``, ``list_datasets``).
* :mod:`~episodes.data.labels`: label maps; :mod:`~episodes.data.preprocess`: normalisation and
  resizing; :mod:`~episodes.data.phantom`: synthetic phantoms.

Import from the modules (this package imports none of them, so ``episodes.data.volumes`` does not
pull in torch through ``episodes.data.preprocess``).
"""
