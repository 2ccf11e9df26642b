"""The paper's interpretability metrics: localisation (eq. 11) and pixel removal."""
from .localisation import cell_scores, confident_images, grid_image, localisation, make_grids
from .pixel_removal import pixel_removal, probability_curve, removal_counts, removal_order

__all__ = ["localisation", "confident_images", "make_grids", "grid_image", "cell_scores",
           "pixel_removal", "probability_curve", "removal_counts", "removal_order"]
