"""LAIONet: recreate ImageNet from an image-text corpus by text-only selection, and measure the difference."""

__version__ = "0.1.0"
