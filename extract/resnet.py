"""ResNet-50 trunk with torchvision's exact layout and state-dict names, without importing torchvision.

Importing torchvision pulls in torch._dynamo (through torchvision.ops), about 4 CPU seconds per process:
more than a 128-image CPU run spends on decoding. torchvision checkpoints load into this module unchanged
(the `fc.*` classifier entries are ignored), and tests check it computes what torchvision's resnet50 computes.
"""
from torch import nn

__all__ = ["ResNet50Trunk", "RESNET50_WEIGHTS"]

# torchvision.models.ResNet50_Weights urls (checked against torchvision in tests/test_extract_backbones.py).
RESNET50_WEIGHTS = {
    "IMAGENET1K_V1": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "IMAGENET1K_V2": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
}


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 convolution."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50Trunk(nn.Module):
    """ResNet-50 up to the global average pool: (N, 3, H, W) -> (N, 2048)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes, layers = 64, []
        for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            first = Bottleneck(inplanes, planes, stride)
            layers.append(nn.Sequential(first, *(Bottleneck(planes * 4, planes) for _ in range(blocks - 1))))
            inplanes = planes * 4
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        for module in self.modules():  # torchvision's initialisation, for the "random" weights
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))
