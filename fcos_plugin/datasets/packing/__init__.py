"""The COCO -> LMDB packer, one job a module; :mod:`fcos_plugin.datasets.coco_packer` is its entry point.

* :mod:`.options` -- what one pack is asked to do (:class:`~.options.PackOptions`) and its file names;
* :mod:`.records` -- reading the COCO JSON and validating its records;
* :mod:`.images` -- decoding an image file and checking its size as training decodes it (EXIF);
* :mod:`.workers` -- the worker processes that read and check images ahead of the writer;
* :mod:`.writer` -- the LMDB writer: image records in batches, then index, categories and manifest;
* :mod:`.target` -- the target directory: the split lock, the existing pack, leftovers, the atomic swap;
* :mod:`.failures` -- what a failed write into the target directory is called (full, read-only, other);
* :mod:`.report` -- the pack's error, its problems, its report file and summary lines.
"""
