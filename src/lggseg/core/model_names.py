"""Architecture and encoder names of segmentation-models-pytorch, known without importing torch.

`params.yaml` is checked at load, before any stage imports torch (which takes seconds): a typo in
`model.architectures` or `model.encoder` fails at once. The lists mirror smp 0.6.0
(`smp.MODEL_ARCHITECTURES_MAPPING`, `smp.encoders.encoders`; tests/test_config.py keeps them equal).
With another smp version installed, a name missing here is looked up in smp itself before it is refused.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

LISTED_SMP_VERSION = "0.6.0"

ARCHITECTURES = (
    "deeplabv3", "deeplabv3plus", "dpt", "fpn", "linknet", "manet", "pan", "pspnet", "segformer", "unet",
    "unetplusplus", "upernet",
)

ENCODERS = (
    "densenet121", "densenet161", "densenet169", "densenet201", "dpn107", "dpn131", "dpn68", "dpn68b", "dpn92",
    "dpn98", "efficientnet-b0", "efficientnet-b1", "efficientnet-b2", "efficientnet-b3", "efficientnet-b4",
    "efficientnet-b5", "efficientnet-b6", "efficientnet-b7", "inceptionresnetv2", "inceptionv4", "mit_b0", "mit_b1",
    "mit_b2", "mit_b3", "mit_b4", "mit_b5", "mobilenet_v2", "mobileone_s0", "mobileone_s1", "mobileone_s2",
    "mobileone_s3", "mobileone_s4", "resnet101", "resnet152", "resnet18", "resnet34", "resnet50", "resnext101_32x16d",
    "resnext101_32x32d", "resnext101_32x48d", "resnext101_32x4d", "resnext101_32x8d", "resnext50_32x4d",
    "se_resnet101", "se_resnet152", "se_resnet50", "se_resnext101_32x4d", "se_resnext50_32x4d", "senet154",
    "timm-efficientnet-b0", "timm-efficientnet-b1", "timm-efficientnet-b2", "timm-efficientnet-b3",
    "timm-efficientnet-b4", "timm-efficientnet-b5", "timm-efficientnet-b6", "timm-efficientnet-b7",
    "timm-efficientnet-b8", "timm-efficientnet-l2", "timm-skresnet18", "timm-skresnet34", "timm-skresnext50_32x4d",
    "timm-tf_efficientnet_lite0", "timm-tf_efficientnet_lite1", "timm-tf_efficientnet_lite2",
    "timm-tf_efficientnet_lite3", "timm-tf_efficientnet_lite4", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16",
    "vgg16_bn", "vgg19", "vgg19_bn", "xception",
)
TIMM_PREFIX = "tu-"  # any timm encoder, e.g. tu-resnet18; timm checks the rest when the model is built


def installed_names() -> tuple[set[str], set[str]]:
    """(architectures, encoders) of the installed smp; imports torch, so only for names not listed above."""
    import segmentation_models_pytorch as smp
    from segmentation_models_pytorch.encoders import encoders

    return set(smp.MODEL_ARCHITECTURES_MAPPING), set(encoders)


def unknown_names(architectures: tuple[str, ...], encoder: str) -> tuple[list[str], bool]:
    """(architecture names smp does not have, whether the encoder is unknown), smp imported only if needed."""
    archs = [a for a in architectures if a.lower() not in ARCHITECTURES]
    encoder_unknown = encoder not in ENCODERS and not encoder.startswith(TIMM_PREFIX)
    if (not archs and not encoder_unknown) or _installed_smp_version() == LISTED_SMP_VERSION:
        return archs, encoder_unknown
    smp_archs, smp_encoders = installed_names()
    return [a for a in archs if a.lower() not in smp_archs], encoder_unknown and encoder not in smp_encoders


def _installed_smp_version() -> str | None:
    try:
        return version("segmentation-models-pytorch")
    except PackageNotFoundError:
        return None
