"""Albumentations pipeline for the train split, built from `augment.*` params."""

from __future__ import annotations

import albumentations as A
import cv2

from lggseg.core.config import AugmentConfig


def build_augmentation(cfg: AugmentConfig, seed: int) -> A.Compose | None:
    """Joint image+mask transform (None when disabled). Masks use nearest-neighbour interpolation
    so they stay binary; pixels moved in from outside are 0 in both image and mask."""
    if not cfg.enabled:
        return None
    transforms: list[A.BasicTransform] = []
    if cfg.hflip_p > 0:
        transforms.append(A.HorizontalFlip(p=cfg.hflip_p))
    if cfg.affine_p > 0:
        transforms.append(A.Affine(
            translate_percent=(-cfg.shift_limit, cfg.shift_limit),
            scale=(1 - cfg.scale_limit, 1 + cfg.scale_limit),
            rotate=(-cfg.rotate_limit, cfg.rotate_limit),
            interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=cfg.affine_p,
        ))
    if cfg.elastic_p > 0:
        transforms.append(A.ElasticTransform(
            alpha=30, sigma=6, mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=cfg.elastic_p,
        ))
    if cfg.brightness_contrast_p > 0:
        transforms.append(A.RandomBrightnessContrast(
            brightness_limit=cfg.brightness_limit, contrast_limit=cfg.contrast_limit, p=cfg.brightness_contrast_p,
        ))
    return A.Compose(transforms, seed=seed)
