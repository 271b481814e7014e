"""dglbench.hardware: one answer for rank, torch device and device name; hardware checks as one-line errors."""

import pytest
import torch
from dglbench.errors import ConfigError
from dglbench.hardware import check_hardware, device_name, global_rank, is_global_zero, torch_device


@pytest.mark.parametrize(
    "accelerator, expected",
    [("cpu", "cpu"), ("gpu", "cuda"), ("cuda", "cuda"), ("auto", "cuda" if torch.cuda.is_available() else "cpu")],
)
def test_torch_device_of_each_accelerator(accelerator, expected):
    assert torch_device(accelerator).type == expected


def test_device_name_and_rank_outside_ddp():
    assert device_name("cpu") and device_name(torch.device("cpu")) == device_name("cpu")
    assert global_rank() == 0 and is_global_zero()


@pytest.mark.parametrize(
    "devices, accelerator, num_nodes, message",
    [
        (0, "cpu", 1, "--devices must be an integer >= 1, got 0"),
        (-1, "cpu", 1, "--devices must be an integer >= 1, got -1"),
        (True, "cpu", 1, "--devices must be an integer >= 1, got True"),
        (1, "cpu", 0, "--num-nodes must be an integer >= 1, got 0"),
        (1, "nosuch", 1, "unknown accelerator 'nosuch'"),
    ],
)
def test_bad_hardware_is_a_config_error(devices, accelerator, num_nodes, message):
    with pytest.raises(ConfigError, match=message):
        check_hardware(devices, accelerator, num_nodes)


def test_a_gpu_accelerator_needs_a_gpu():
    if torch.cuda.is_available():
        check_hardware(torch.cuda.device_count(), "gpu")
        with pytest.raises(ConfigError, match="CUDA GPU"):
            check_hardware(torch.cuda.device_count() + 1, "gpu")
    else:
        with pytest.raises(ConfigError, match="needs a CUDA GPU, but torch sees none"):
            check_hardware(1, "gpu")
