"""Small, seeded models shared by the strategy, group and freezing tests."""
import torch
import torchvision


def resnet(name: str = "resnet18"):
    """A torchvision ResNet with 10 classes (BatchNorm model)."""
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(num_classes=10)


def vit():
    """A timm ViT-Tiny at 32 px with 10 classes (LayerNorm model, root cls_token/pos_embed)."""
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=10)


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}
