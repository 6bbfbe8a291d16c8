"""Data: readers for CamVid / VOC / Cityscapes / a user's folder (``datasets``), the built-in
``synthetic`` dataset, split files (``splits``) and joint transforms (``transforms``).
Entry points: ``rc2l.data.build.build_datasets`` / ``dataset_info`` and
``rc2l.data.datasets.collate``."""
