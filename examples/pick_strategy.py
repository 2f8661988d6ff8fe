"""Pick a strategy by name: load a backbone, adapt it, build the optimizer, train."""
import thawkit
import torch

model = thawkit.load_backbone("torchvision:resnet18", weights=None)  # weights="DEFAULT": ImageNet
adapted = thawkit.adapt(model, "gradual", num_classes=10, every=1)  # head, then a block an epoch
optimizer = adapted.optimizer("adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.8)
for epoch in range(3):
    adapted.on_epoch_start(epoch)  # thaws the next block; the optimizer already holds it
    adapted.model.train()
    images, labels = torch.randn(4, 3, 64, 64), torch.randint(0, 10, (4,))  # your DataLoader here
    loss = torch.nn.functional.cross_entropy(adapted.model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(epoch, adapted.plan.summary())
