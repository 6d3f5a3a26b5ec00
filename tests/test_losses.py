import math

import pytest
import torch

from bpnp.geometry import axis_angle_to_matrix
from bpnp.training.losses import (
    correspondence_loss,
    dustbin_nll,
    match_matrix,
    pose_weight,
    rotation_loss,
    translation_loss,
)


def test_match_matrix_and_correspondence_loss_hand_computed():
    match = torch.tensor([[1, -1, 0]])
    C = match_matrix(match, 2)
    assert C.tolist() == [[[False, True], [False, False], [True, False]]]
    P = torch.tensor([[[0.1, 0.3], [0.2, 0.0], [0.4, 0.0]]])
    # wrong mass 0.1 + 0.2 = 0.3, right mass 0.3 + 0.4 = 0.7  ->  0.3 - 0.7
    assert correspondence_loss(P, match).item() == pytest.approx(-0.4)


def test_dustbin_nll_is_zero_for_the_perfect_plan():
    # 2 real 2D points, 2 real 3D points: 2D 0 <-> 3D 1, 2D 1 unmatched, 3D 0 unmatched; m + n = 4
    match = torch.tensor([[1, -1]])
    P = torch.zeros(1, 3, 3)
    P[0, 0, 1] = P[0, 1, 2] = P[0, 2, 0] = 0.25
    P[0, 2, 2] = 0.25  # dustbin-dustbin mass is not scored
    masks = torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool)
    assert abs(dustbin_nll(P, match, *masks).item()) < 1e-6
    P2 = P.clone()
    P2[0, 0, 1], P2[0, 0, 0] = 0.125, 0.125
    assert abs(dustbin_nll(P2, match, *masks).item() - math.log(2) / 3) < 1e-6


def test_pose_losses_are_capped():
    I = torch.eye(3)[None]
    R90 = axis_angle_to_matrix(torch.tensor([[0.0, 0.0, math.pi / 2 + 0.3]]))
    R10 = axis_angle_to_matrix(torch.tensor([[0.0, math.radians(10), 0.0]]))
    assert abs(rotation_loss(R10, I).item() - math.radians(10)) < 1e-5
    assert rotation_loss(R90, I).item() == pytest.approx(math.pi / 2)
    assert (
        translation_loss(torch.tensor([[0.3, 0.4, 0.0]]), torch.zeros(1, 3)).item()
        == torch.tensor(0.5).item()
    )
    assert translation_loss(torch.tensor([[3.0, 4.0, 0.0]]), torch.zeros(1, 3)).item() == 1.0


def test_pose_weight_schedule():
    assert pose_weight(3, None, 2, 1.0) == 0.0
    assert pose_weight(4, 5, 2, 1.0) == 0.0
    assert pose_weight(5, 5, 2, 1.0) == 0.5
    assert pose_weight(6, 5, 2, 1.0) == 1.0
    assert pose_weight(60, 5, 2, 0.1) == 0.1
