"""Redesigned R-CNN subnet of Light Mask R-CNN (paper Sec. III-C, Fig. 2) and Table II's C5 subnet
on the thin feature map."""
from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.backbone.resnet import BottleneckBlock, ResNet
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import (
    ROI_BOX_HEAD_REGISTRY,
    ROI_HEADS_REGISTRY,
    Res5ROIHeads,
    ROIHeads,
    build_box_head,
    build_mask_head,
    select_foreground_proposals,
)
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, ImageList, Instances
import fvcore.nn.weight_init as weight_init
from torch import nn

from .separable_roi_align import SeparableROIPooler


def build_roi_pooler(cfg, input_shape):
    """The single-level ROI pooler of the light ROI heads on ``ROI_HEADS.IN_FEATURES[0]`` (as
    detectron2's Res5ROIHeads builds it): ``ROI_BOX_HEAD.POOLER_*``, and the separable ROIAlign
    when ``MODEL.LIGHT_HEAD.SEPARABLE_ROI_ALIGN`` is on."""
    pooler_class = SeparableROIPooler if cfg.MODEL.LIGHT_HEAD.SEPARABLE_ROI_ALIGN else ROIPooler
    return pooler_class(
        output_size=cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION,
        scales=(1.0 / input_shape[cfg.MODEL.ROI_HEADS.IN_FEATURES[0]].stride,),
        sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
        pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
    )


@ROI_BOX_HEAD_REGISTRY.register()
class LightRCNNSubnetHead(nn.Module):
    """The paper's replacement of the res5 block: 3x3 convs on every ROI, then a box pooling.

    ``forward``: ROI features (N, C_in, R, R) -> conv features (N, C_out, R, R) (R = 14 in the paper;
    C_out = ``conv_dims[-1]``, 512 in framework 1). These feed both the box branch and the mask branch.
    ``pool``: conv features -> (N, C_out * (R / p)^2) by average pooling with window = stride = p
    (``box_pool_size``): p = 7 gives the paper's 2 x 2 x C_out vector, p = 14 a 1 x 1 x C_out one.
    ``output_shape`` is the pooled vector's shape (for FastRCNNOutputLayers).
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, conv_dims, conv_norm="", box_pool_size=7):
        super().__init__()
        if not conv_dims or any(int(c) <= 0 for c in conv_dims):
            raise ValueError(f"MODEL.LIGHT_HEAD.CONV_DIMS={list(conv_dims)}: expected positive channel counts")
        resolution = input_shape.height
        if box_pool_size <= 0 or resolution % box_pool_size != 0:
            allowed = [p for p in range(1, resolution + 1) if resolution % p == 0 and p > 1]
            raise ValueError(
                f"MODEL.LIGHT_HEAD.BOX_POOL_SIZE={box_pool_size}: must divide the ROI resolution "
                f"{resolution} (MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION); allowed: {allowed} (paper: 7 or 14)"
            )
        self.convs = []
        channels = input_shape.channels
        for i, dim in enumerate(conv_dims):
            conv = Conv2d(channels, dim, 3, padding=1, bias=not conv_norm, norm=get_norm(conv_norm, dim),
                          activation=nn.ReLU())
            weight_init.c2_msra_fill(conv)
            self.add_module(f"conv{i + 1}", conv)
            self.convs.append(conv)
            channels = dim
        self.box_pool = nn.AvgPool2d(box_pool_size, stride=box_pool_size)
        cells = (resolution // box_pool_size) ** 2
        self._conv_shape = ShapeSpec(channels=channels, height=resolution, width=resolution)
        self._output_shape = ShapeSpec(channels=channels * cells, height=1, width=1)

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {
            "input_shape": input_shape,
            "conv_dims": list(cfg.MODEL.LIGHT_HEAD.CONV_DIMS),
            "conv_norm": cfg.MODEL.LIGHT_HEAD.NORM,
            "box_pool_size": cfg.MODEL.LIGHT_HEAD.BOX_POOL_SIZE,
        }

    def forward(self, x):
        # The convs in registration order (``self.convs`` is a plain list, which TorchScript cannot
        # read; iterating the children keeps the module scriptable and its checkpoint keys unchanged).
        for name, module in self.named_children():
            if name.startswith("conv"):
                x = module(x)
        return x

    def pool(self, features):
        return torch.flatten(self.box_pool(features), start_dim=1)

    # Build-time metadata, not part of a scripted model (as detectron2's box heads do).
    @property
    @torch.jit.unused
    def conv_output_shape(self):
        """Shape of :meth:`forward`'s output, which the mask head reads."""
        return self._conv_shape

    @property
    @torch.jit.unused
    def output_shape(self):
        return self._output_shape


@ROI_HEADS_REGISTRY.register()
class LightRCNNROIHeads(Res5ROIHeads):
    """ROI heads of Light Mask R-CNN: ROIAlign (14 x 14) on the thin map, the redesigned subnet
    (:class:`LightRCNNSubnetHead`, registered as a box head), detectron2's FastRCNNOutputLayers on
    the pooled vector, and a mask head on the 14 x 14 conv features (with
    ``ROI_MASK_HEAD.NAME: MaskRCNNConvUpsampleHead`` and ``NUM_CONV: 0``: one 2x2/2 deconvolution
    14 -> 28 and per-class mask logits, trained with detectron2's mask loss).

    As in detectron2's Res5ROIHeads (which this class extends), training pools and runs the subnet
    once per sampled proposal and the mask branch reuses the features of the foreground ones; at
    inference masks are predicted for the final boxes (``forward_with_given_boxes``).
    """

    @configurable
    def __init__(self, *, in_features, pooler, subnet, box_predictor, mask_head=None, **kwargs):
        ROIHeads.__init__(self, **kwargs)
        self.in_features = in_features
        self.pooler = pooler
        self.subnet = subnet
        self.box_predictor = box_predictor
        self.mask_on = mask_head is not None
        if self.mask_on:
            self.mask_head = mask_head

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = ROIHeads.from_config(cfg)
        in_features = ret["in_features"] = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        if len(in_features) != 1:
            raise ValueError(f"MODEL.ROI_HEADS.IN_FEATURES={in_features}: LightRCNNROIHeads reads one feature map")
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        ret["pooler"] = build_roi_pooler(cfg, input_shape)
        roi_shape = ShapeSpec(channels=input_shape[in_features[0]].channels, height=resolution, width=resolution)
        subnet = ret["subnet"] = build_box_head(cfg, roi_shape)
        if not hasattr(subnet, "pool"):
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.NAME={cfg.MODEL.ROI_BOX_HEAD.NAME!r}: LightRCNNROIHeads needs a box head "
                "with a pool() method, e.g. 'LightRCNNSubnetHead'"
            )
        ret["box_predictor"] = FastRCNNOutputLayers(cfg, subnet.output_shape)
        if cfg.MODEL.MASK_ON:
            ret["mask_head"] = build_mask_head(cfg, subnet.conv_output_shape)
        return ret

    # Annotated for TorchScript (detectron2's scripting export compiles these methods).
    def _shared_roi_transform(self, features: List[torch.Tensor], boxes: List[Boxes]):
        return self.subnet(self.pooler(features, boxes))

    def box_class_logits(self, features, boxes):
        """Class logits of the box branch on given boxes, through the layers training runs
        (pooler -> subnet -> box pooling -> box predictor); read by distillation.

        Args:
            features: dict name -> (N, C, H, W) backbone features (holding ``in_features``).
            boxes: list of N :class:`Boxes`, R_i boxes for image i.
        Returns:
            (sum R_i, K + 1) class logits.
        """
        x = self._shared_roi_transform([features[f] for f in self.in_features], boxes)
        return self.box_predictor(self.subnet.pool(x))[0]

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ):
        del images
        if self.training:
            assert targets, "LightRCNNROIHeads needs targets in training"
            proposals = self.label_and_sample_proposals(proposals, targets)
        del targets

        roi_features = self._shared_roi_transform([features[f] for f in self.in_features],
                                                  [p.proposal_boxes for p in proposals])
        predictions = self.box_predictor(self.subnet.pool(roi_features))
        if not self.training:
            pred_instances, _ = self.box_predictor.inference(predictions, proposals)
            return self.forward_with_given_boxes(features, pred_instances), {}

        losses = self.box_predictor.losses(predictions, proposals)
        if self.mask_on:
            proposals, fg_masks = select_foreground_proposals(proposals, self.num_classes)
            losses.update(self.mask_head(roi_features[torch.cat(fg_masks, dim=0)], proposals))
        return [], losses


@ROI_HEADS_REGISTRY.register()
class ThinRes5ROIHeads(Res5ROIHeads):
    """Table II's "C5" subnet: detectron2's res5 ROI head (3 bottleneck blocks, global average
    pooling) fed with the thin map. Its first block takes ``MODEL.SLK.OUT_CHANNELS`` channels
    (64/128/256) instead of res4's 1024; everything else is detectron2's Res5ROIHeads.

    ``MODEL.LIGHT_HEAD.RES5_{NUM_BLOCKS,BOTTLENECK_CHANNELS,OUT_CHANNELS}`` make it cheaper per
    ROI (fewer or narrower bottleneck blocks; defaults: detectron2's res5), ``RES5_NORM`` sets its
    normalization (default: ``RESNETS.NORM``). ROI features
    (N, C_thin, 14, 14) -> res5 (N, C_res5, 7, 7) -> box/class and mask heads.
    The first block's shortcut is always a strided 1x1 projection, also when C_thin equals res5's
    output channels (detectron2's block projects only when the channels change).
    """

    # Its blocks read the neck, not res4: a classifier trunk's res5 does not load into them
    # (light_rcnn.engine.checkpoint.trunk_prefixes).
    res5_is_trunk_stage = False

    @classmethod
    def from_config(cls, cfg, input_shape):
        thin = input_shape[cfg.MODEL.ROI_HEADS.IN_FEATURES[0]].channels
        if thin != cfg.MODEL.SLK.OUT_CHANNELS:
            raise ValueError(
                f"ThinRes5ROIHeads reads {cfg.MODEL.ROI_HEADS.IN_FEATURES[0]!r} with {thin} channels but "
                f"MODEL.SLK.OUT_CHANNELS={cfg.MODEL.SLK.OUT_CHANNELS}; use it on the large-kernel neck's output"
            )
        ret = super().from_config(cfg, input_shape)
        if cfg.MODEL.LIGHT_HEAD.SEPARABLE_ROI_ALIGN:  # the same pooling as Res5ROIHeads', trained as matrix products
            ret["pooler"] = build_roi_pooler(cfg, input_shape)
        return ret

    @classmethod
    def _build_res5_block(cls, cfg):
        r, head = cfg.MODEL.RESNETS, cfg.MODEL.LIGHT_HEAD
        num_blocks = head.RES5_NUM_BLOCKS
        bottleneck_channels = head.RES5_BOTTLENECK_CHANNELS or r.NUM_GROUPS * r.WIDTH_PER_GROUP * 8
        out_channels = head.RES5_OUT_CHANNELS or r.RES2_OUT_CHANNELS * 8
        norm = head.RES5_NORM or r.NORM
        for key, value in (("RES5_NUM_BLOCKS", num_blocks), ("RES5_BOTTLENECK_CHANNELS", bottleneck_channels),
                           ("RES5_OUT_CHANNELS", out_channels)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"MODEL.LIGHT_HEAD.{key}={getattr(head, key)!r}: expected a positive integer "
                                 "(0 for the channel counts = ResNet's res5)")
        if bottleneck_channels % r.NUM_GROUPS != 0:
            raise ValueError(f"MODEL.LIGHT_HEAD.RES5_BOTTLENECK_CHANNELS={bottleneck_channels}: must be a multiple "
                             f"of MODEL.RESNETS.NUM_GROUPS={r.NUM_GROUPS}")
        blocks = ResNet.make_stage(
            BottleneckBlock,
            num_blocks,
            stride_per_block=[2] + [1] * (num_blocks - 1),
            in_channels=cfg.MODEL.SLK.OUT_CHANNELS,
            bottleneck_channels=bottleneck_channels,
            out_channels=out_channels,
            num_groups=r.NUM_GROUPS,
            norm=norm,
            stride_in_1x1=r.STRIDE_IN_1X1,
        )
        first = blocks[0]
        if first.shortcut is None and first.stride != 1:
            # detectron2's block projects the shortcut only when the channels change; this one also
            # halves the resolution (SLK.OUT_CHANNELS == res5's output channels), so it needs a strided
            # 1x1 projection too. The paper's sizes (64/128/256 -> 2048) already have one: keys unchanged.
            first.shortcut = Conv2d(first.in_channels, out_channels, kernel_size=1, stride=first.stride,
                                    bias=False, norm=get_norm(norm, out_channels))
            weight_init.c2_msra_fill(first.shortcut)
        return nn.Sequential(*blocks), out_channels
