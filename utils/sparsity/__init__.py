"""Sparsity: pure mask math (tensor in, tensor out), the masks held during training, and measurement.

A mask is a bool tensor shaped like its weight; True keeps a weight. Sparsity is a fraction in [0, 1].
"""
from utils.sparsity.held import HeldMasks
from utils.sparsity.masks import (
                                  PRUNABLE_TYPES,
                                  apply_masks_,
                                  check_masks_match_zeros,
                                  global_magnitude_masks,
                                  global_sparsity,
                                  layer_sparsity,
                                  magnitude_mask,
                                  mask_grads_,
                                  masks_from_zeros,
                                  prunable_parameters,
                                  sparsity,
)
from utils.sparsity.model import backbone_weights, magnitude_prune_, measured_sparsity, sparse_layers
from utils.sparsity.structured import MaskType, layer_mask, make_masks, parse_mask_type

__all__ = ["HeldMasks", "MaskType", "PRUNABLE_TYPES", "apply_masks_", "backbone_weights", "check_masks_match_zeros",
           "global_magnitude_masks", "global_sparsity", "layer_mask", "layer_sparsity", "magnitude_mask",
           "magnitude_prune_", "make_masks", "mask_grads_", "masks_from_zeros", "measured_sparsity",
           "parse_mask_type", "prunable_parameters", "sparse_layers", "sparsity"]
