"""The catalog of admin-authorized images (catalog.py), what an image is (model.py), and
the checks behind authorization: descriptor shape, pool files, disk headers, checksums."""

from vtorque.images.catalog import Catalog
from vtorque.images.model import (
    ARCHES,
    DESCRIPTOR_SUFFIX,
    DISK_FORMATS,
    KINDS,
    Image,
    ImageFile,
    check_name,
    is_valid_name,
)

__all__ = ["ARCHES", "DESCRIPTOR_SUFFIX", "DISK_FORMATS", "KINDS", "Catalog", "Image",
           "ImageFile", "check_name", "is_valid_name"]
