"""Render a batch's jobs on Ray workers (`run.py --workers N`): a local Ray instance by default, an existing
cluster with --ray_address (or RAY_ADDRESS).

Each worker is a Ray actor that loads the model once and renders whole jobs, reading inputs and writing
outputs on a filesystem every node sees (for the local instance, this machine's): only job descriptions
and jobs.Result travel through Ray, never frames. A worker that dies mid-job (killed, out of memory) has
the job retried on a fresh worker after its temporaries are removed, so no partial file is left and
nothing is written twice. Ray is imported here only, and only with --workers.

Privacy and exposure: usage statistics are switched off wherever we start or join Ray, the dashboard is
not started, the local instance listens on the loopback interface only, and Ray's token authentication
stays as Ray sets it (on, in Ray 2.60).
"""
import collections
import logging
import os
import sys

import backends
import jobs
import utils

REPO_DIR = os.path.dirname(os.path.abspath(__file__))
INSTALL = "pip install -r requirements-cluster.txt"
MAX_ATTEMPTS = 3  # a job whose worker dies is tried on a fresh worker up to this many times in all
# A vox-256 worker's memory: run.py's peak resident memory on the direct target is ~1.8 GB
# (tools/bench_workers.py prints it); the activations grow with the frame's pixels.
WORKER_MEMORY_256 = 2 * 2 ** 30


def render_jobs(args, plan, todo):
    """jobs.Result for each of `todo` (in any order), rendered on Ray workers, and when every worker had
    loaded the model; cleans up on any exit."""
    import time

    address = args.ray_address or os.environ.get("RAY_ADDRESS") or None
    ray = import_ray(address)
    pool = None
    started_here = start_ray(ray, address)
    try:
        pool = WorkerPool(ray, args, plan, worker_count(ray, args, plan, len(todo)))
        ready = time.perf_counter()
        return pool.render(todo), ready
    finally:
        if pool is not None:
            pool.stop()
        if started_here or ray.is_initialized():
            ray.shutdown()


def import_ray(address):
    """Import Ray with usage statistics off and, for an instance on this machine, loopback-only sockets."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if address is not None:
        # A Ray 2.60 cluster wants its token (~/.ray/auth_token or RAY_AUTH_TOKEN) from clients too, and a
        # client sends it only in token mode; RAY_AUTH_MODE set by the user is kept.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    if address is None or _is_loopback(address):
        # Ray resolves 127.0.0.1 to the machine's public address unless this is 0; with it, every
        # server of the instance (GCS, raylet, workers) binds to 127.0.0.1 only.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        with backends.native_output_hidden():
            import ray
    except ImportError:
        raise utils.UserError(f"--workers runs the jobs on Ray, which is not installed: {INSTALL}") from None
    return ray


def _is_loopback(address):
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def start_ray(ray, address):
    """Join the cluster at `address`, or start a local instance (True) that the run shuts down at its end."""
    verbose = backends.verbosity() == "verbose"
    settings = dict(logging_level=logging.INFO if verbose else logging.WARNING, log_to_driver=verbose,
                    runtime_env={"env_vars": worker_environment()})
    try:
        # Ray announces itself and its token authentication on stderr at start-up: shown with --verbose.
        with backends.native_output_hidden():
            if address is None:
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, **settings)
            else:
                ray.init(address=address, **settings)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise utils.UserError(f"cannot start or join {where} ({utils.first_line(err)})") from err
    utils.status(f"{'joined the Ray cluster at ' + address if address else 'started a local Ray instance'}")
    return address is None


def worker_environment():
    """What each worker process needs: this repository importable, no usage statistics, our verbosity."""
    path = os.pathsep.join(p for p in (REPO_DIR, os.environ.get("PYTHONPATH")) if p)
    environment = {"PYTHONPATH": path, "RAY_USAGE_STATS_ENABLED": "0"}
    if backends.verbosity() == "verbose":
        environment["FOMM_VERBOSE"] = "1"
    return environment


def worker_memory(frame_shape):
    """Bytes one worker needs: the measured vox-256 figure, scaled by frame area above 256x256."""
    height, width = frame_shape[:2]
    return WORKER_MEMORY_256 * max(1.0, height * width / 256 ** 2)


def worker_count(ray, args, plan, job_count):
    """--workers, capped by the jobs, the cluster's CPUs and its memory (each cap said in one line)."""
    resources = ray.cluster_resources()
    cpus = int(resources.get("CPU", 0))
    memory = resources.get("memory", 0)
    per_worker = worker_memory(plan.config.frame_shape)
    count = min(args.workers, job_count)
    if cpus < 1:
        raise utils.UserError("the Ray cluster has no CPUs to run workers on")
    if count > cpus:
        utils.warn(f"--workers {args.workers}: the Ray cluster has {cpus} CPUs; using {cpus} workers")
        count = cpus
    fits = int(memory // per_worker) if memory else count
    if fits < 1:
        raise utils.UserError(f"--workers: one worker needs ~{per_worker / 2 ** 30:.1f} GiB and the Ray cluster "
                              f"offers {memory / 2 ** 30:.1f} GiB")
    if count > fits:
        utils.warn(f"--workers {args.workers}: each worker needs ~{per_worker / 2 ** 30:.1f} GiB and the Ray "
                      f"cluster offers {memory / 2 ** 30:.1f} GiB; using {fits} workers")
        count = fits
    return count


class RenderWorker:
    """A Ray actor: the model loaded once, then whole jobs rendered with run.execute, as in-process."""

    def __init__(self, args, plan_parts, threads, cwd):
        # Relative paths in the command mean what they meant to the driver (a shared filesystem).
        os.chdir(cwd)
        self.args = args
        self.config, self.checkpoint_path = plan_parts
        self.threads = threads
        self.models = self.drawer = self.write_cache = None

    def load(self):
        """Import the runtime and load the model; returns the one-line error, or None when ready."""
        import checkpoint_loader
        import run
        import visualizer

        backends.set_verbosity("verbose" if os.environ.get("FOMM_VERBOSE") == "1" else "quiet")
        backends.set_threads(self.threads)
        try:
            with run._device(self.args.device):
                self.models, self.write_cache = run.load_models_and_cache_writer(self.args, self.config.model,
                                                                                 self.checkpoint_path)
                self.models.wait()  # loaded before the worker reports ready
        except (utils.UserError, checkpoint_loader.CheckpointError) as err:
            return str(err)
        if self.args.visualizer:
            self.drawer = visualizer.Visualizer.from_params(self.config.visualizer_params)
        return None

    def pid(self):
        return os.getpid()

    def render(self, job):
        import run

        with run._device(self.args.device), utils.collected_warnings() as said:
            result = run.execute(self.args, self.models, job, self.drawer)
            if self.write_cache is not None:  # a model cache miss: written after the first job, as in-process
                self.write_cache()
                self.write_cache = None
        result.warnings = list(said)
        return result


class WorkerPool:
    """The run's workers, each with one job at a time; a dead one is replaced and its job retried."""

    def __init__(self, ray, args, plan, count):
        self.ray = ray
        self.args = args
        self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // count)
        self.threads = args.threads or self.cpus
        self.memory = worker_memory(plan.config.frame_shape)
        self.actor_class = ray.remote(RenderWorker)
        self.plan_parts = (plan.config, plan.checkpoint_path)
        self.running = {}  # ObjectRef -> (job, actor)
        self.pids = {}
        utils.status(f"starting {count} Ray worker{'s' if count > 1 else ''} "
                        f"({self.cpus} CPU{'s' if self.cpus > 1 else ''}, {self.threads} "
                        f"thread{'s' if self.threads > 1 else ''} each), each loading the model")
        self.idle = self.start_workers(count)

    def start_workers(self, count):
        """`count` loaded workers; a model that fails to load is the run's error, said once."""
        actors = [self.actor_class.options(num_cpus=self.cpus, memory=self.memory).remote(
            self.args, self.plan_parts, self.threads, os.getcwd()) for _ in range(count)]
        errors = self.ray.get([actor.load.remote() for actor in actors])
        for error in errors:
            if error is not None:
                raise utils.UserError(error)
        for actor, pid in zip(actors, self.ray.get([actor.pid.remote() for actor in actors])):
            self.pids[actor] = pid
        return actors

    def render(self, todo):
        from tqdm import tqdm

        queue = collections.deque(todo)
        attempts = collections.Counter()
        results = []
        frames = 0
        with tqdm(total=len(todo), unit="video", desc="jobs", disable=backends.verbosity() == "quiet") as bar:
            while queue or self.running:
                while self.idle and queue:
                    self.submit(queue.popleft(), self.idle.pop())
                [ref], _ = self.ray.wait(list(self.running), num_returns=1)
                job, actor = self.running.pop(ref)
                try:
                    result = self.ray.get(ref)
                except self.ray.exceptions.RayActorError as err:
                    attempts[job.output] += 1
                    result = self.worker_died(job, actor, err, attempts[job.output], queue)
                    if result is None:
                        continue
                else:
                    self.idle.append(actor)
                for message in result.warnings:
                    bar.clear()
                    utils.warn(f"{job.name}: {message}")
                if not result.ok:
                    bar.clear()
                    jobs.report_failure(result)
                results.append(result)
                frames += result.frames
                bar.set_postfix(frames=frames, failed=sum(1 for r in results if not r.ok), refresh=False)
                bar.update(1)
        return results

    def submit(self, job, actor):
        self.running[actor.render.remote(job)] = (job, actor)

    def worker_died(self, job, actor, err, attempt, queue):
        """Clean up after a dead worker and replace it; the job goes back to the queue, or after
        MAX_ATTEMPTS becomes a failed Result."""
        jobs.remove_partial(job.output, utils.visualizer_path(job.output))
        reason = utils.first_line(getattr(err, "error_msg", None) or err) or type(err).__name__
        pid = self.pids.pop(actor, "?")
        self.idle.extend(self.start_workers(1))
        if attempt < MAX_ATTEMPTS:
            utils.warn(f"{job.name}: its worker (pid {pid}) died ({_short(reason)}); "
                          f"retrying on another worker (attempt {attempt + 1} of {MAX_ATTEMPTS})")
            queue.appendleft(job)
            return None
        return jobs.Result(job.name, job.output, error=f"its worker died {MAX_ATTEMPTS} times ({_short(reason)})")

    def stop(self):
        """Stop the workers and remove what jobs in flight left half-written (Ctrl-C, an error)."""
        for actor in list(self.pids):
            self.ray.kill(actor)
        for job, _ in self.running.values():
            jobs.remove_partial(job.output, utils.visualizer_path(job.output))
        self.running.clear()


def _short(reason, limit=160):
    return reason if len(reason) <= limit else reason[:limit - 3] + "..."


if __name__ == "__main__":
    sys.exit("cluster.py is used by run.py --workers N; see README, Scale out")
