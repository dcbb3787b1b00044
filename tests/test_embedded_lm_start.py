"""What the embedded LM checks before it loads llama.cpp (stack/embedded_lm.py): pure logic, no process."""

import platform
from pathlib import Path

import pytest

from core.settings import EMBEDDED_LM_MODEL, Settings
from stack import embedded_lm

# /proc/cpuinfo of an x86-64 CPU from before AVX2 (Sandy Bridge), cut to what is read.
SANDY_BRIDGE = """processor\t: 0
model name\t: Intel(R) Xeon(R) CPU E5-2670 0 @ 2.60GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ss ht syscall nx lm sse3 ssse3 cx16 sse4_1 \
sse4_2 popcnt aes xsave avx
"""

needs_x86_linux = pytest.mark.skipif(
    (platform.system(), platform.machine()) != ("Linux", "x86_64"), reason="the check runs on x86-64 Linux only"
)


@needs_x86_linux
def test_a_cpu_without_avx2_is_refused_with_a_message_naming_what_it_lacks_and_what_to_do() -> None:
    with pytest.raises(embedded_lm.CPUUnsupported) as refused:
        embedded_lm.check_cpu(SANDY_BRIDGE)

    message = str(refused.value)
    assert "lacks AVX2, FMA, F16C" in message
    assert "LM_API_BASE" in message and "LM_MODEL" in message


@needs_x86_linux
def test_this_machines_cpu_is_accepted() -> None:
    """The tests run the embedded model here, so this CPU must pass the check the server makes."""
    embedded_lm.check_cpu(Path("/proc/cpuinfo").read_text())


def test_the_server_takes_its_slots_and_threads_from_the_settings_unless_told_otherwise() -> None:
    settings = Settings(embedded_lm_slots=6, embedded_lm_threads=3)
    defaults = embedded_lm.parse_args([], settings)
    assert (defaults.slots, defaults.threads) == (6, 3)
    told = embedded_lm.parse_args(["--slots", "2", "--threads", "1"], settings)

    params = embedded_lm.server_params("127.0.0.1", 8080, told.slots, told.threads)

    assert (params.n_parallel, params.cpuparams.n_threads, params.cpuparams_batch.n_threads) == (2, 1, 1)
    assert params.n_ctx == 2 * embedded_lm.SLOT_CONTEXT_TOKENS  # llama.cpp divides it among the slots


@pytest.mark.parametrize(
    ("model", "api_base", "started"),
    [
        (EMBEDDED_LM_MODEL, "http://127.0.0.1:8080/v1", True),
        (EMBEDDED_LM_MODEL, "http://localhost:18080/v1", True),  # another port: a second stack beside the first
        (EMBEDDED_LM_MODEL, "http://lm:8080/v1", False),  # served elsewhere (compose's `lm` service)
        ("openai/gpt-4o-mini", "http://127.0.0.1:8080/v1", False),
        (EMBEDDED_LM_MODEL, None, False),
    ],
)
def test_make_up_starts_the_embedded_lm_for_its_model_on_this_machine_at_any_port(
    model: str, api_base: str | None, started: bool
) -> None:
    assert Settings(lm_model=model, lm_api_base=api_base).uses_embedded_lm is started
