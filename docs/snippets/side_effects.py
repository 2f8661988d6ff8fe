"""What thawkit changes on the model you give it, printed."""
import thawkit
import torch

model = thawkit.load_backbone("torchvision:resnet18", weights=None)
print("spec:", repr(model._thawkit_spec))  # set by load_backbone; thawkit.spec_of(model) reads it

adapted = thawkit.adapt(model, "last-block", num_classes=10)  # layer4 and the new head train
assert adapted.model is model  # changed in place: new head, flags, hooks
print("conv1.weight requires_grad:", model.conv1.weight.requires_grad, "grad:", model.conv1.weight.grad)
print("bn1 forward pre-hooks:", [hook.__name__ for hook in model.bn1._forward_pre_hooks.values()])

model.train()
print("bn1.training after model.train():", model.bn1.training)
before = model.bn1.running_mean.clone()
model(torch.randn(2, 3, 64, 64))
print("bn1.training during the forward:", model.bn1.training,
      "| running_mean unchanged:", torch.equal(before, model.bn1.running_mean))
print("layer4 norm follows the model:", model.layer4[0].bn1.training)
