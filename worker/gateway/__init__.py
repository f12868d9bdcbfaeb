"""DICOM in, as scanners and PACS send it: C-STORE and STOW-RS to durable scan events."""
