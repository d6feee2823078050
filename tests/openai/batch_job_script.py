"""Run an offline batch job on the tiny test model (a subprocess for the SIGKILL test).

usage: python batch_job_script.py IN OUT [STEP_DELAY_SECONDS]
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "engine"))

from engine_fakes import tiny_loaded

from lhama.engine import EngineConfig, LLMEngine
from lhama.openai.engine_batch import run_batch_file

if __name__ == "__main__":
    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    if delay:
        step = LLMEngine.step

        def slow_step(self):
            time.sleep(delay)
            return step(self)

        LLMEngine.step = slow_step
    loaded = tiny_loaded(seed=1)
    s = run_batch_file(
        loaded, sys.argv[1], sys.argv[2], EngineConfig(num_blocks=256, block_size=4, max_num_seqs=4), progress=False
    )
    print(f"total={s.total} already_done={s.already_done} succeeded={s.succeeded} failed={s.failed}")
