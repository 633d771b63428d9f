"""Gallery and history: every image in outputs/ (and folders the user adds) in a SQLite index.

index.py (the database), scanner.py (files -> rows), thumbnails.py, service.py (the background
indexer, trash), api.py (/easel/v1/images); the tab is webui/ui/gallery_tab.py. Importing this
package starts nothing: the app calls `Gallery.start()`.
"""
from .index import GalleryIndex, Query
from .service import Gallery, GalleryError

__all__ = ["Gallery", "GalleryError", "GalleryIndex", "Query"]
