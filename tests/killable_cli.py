"""The negalign command line, slowed down so that a test can kill it with SIGKILL at a point it chooses.

    python tests/killable_cli.py STAGE SECONDS sample|train ...     (then the arguments of `negalign`)

STAGE "sampling" sleeps SECONDS before each sampling batch, "training" before each training step, and
"cache" writes the reference log-prob cache's temporary file in two halves with 60 x SECONDS between them,
so tests/test_reliability.py can kill the process while rows are being appended, between checkpoints, or
half-way through a cache write. Everything else is the real code path; the test reruns the plain command.
"""

import sys
import time


def main() -> int:
    stage, pause = sys.argv[1], float(sys.argv[2])
    if stage not in ("sampling", "training", "cache"):
        raise SystemExit(f"killable_cli: unknown stage {stage!r}")
    if pause > 0:
        import negalign.reference as reference
        import negalign.sampling as sampling
        from negalign.trainer import NegalignTrainer

        generate_batch, training_step, save_file = (sampling.generate_batch, NegalignTrainer.training_step,
                                                    reference.save_file)

        def slow_generate_batch(*args, **kwargs):
            time.sleep(pause)
            return generate_batch(*args, **kwargs)

        steps = []

        def slow_training_step(self, *args, **kwargs):
            steps.append(1)
            print(f"killable_cli: training step {len(steps)}", flush=True)
            time.sleep(pause)
            return training_step(self, *args, **kwargs)

        def slow_save_file(tensors, filename, *args, **kwargs):
            save_file(tensors, filename, *args, **kwargs)
            with open(filename, "rb") as handle:
                data = handle.read()
            with open(filename, "wb") as handle:  # the first half, then a pause: a kill lands mid-write
                handle.write(data[: len(data) // 2])
                handle.flush()
                print(f"killable_cli: writing {filename}", flush=True)
                time.sleep(60 * pause)
                handle.write(data[len(data) // 2:])

        if stage == "sampling":
            sampling.generate_batch = slow_generate_batch
        elif stage == "training":
            NegalignTrainer.training_step = slow_training_step
        else:
            reference.save_file = slow_save_file
    from negalign.cli import main as negalign

    return negalign(sys.argv[3:])


if __name__ == "__main__":
    sys.exit(main())
