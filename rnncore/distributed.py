"""Data-parallel training over MPI (mpi4py), in the way of Horovod and torch.distributed.

Every rank (one process, `mpiexec -n N python ...`) holds a whole replica of the model and the
optimizer. ``Trainer(model, optimizer, comm=MPI.COMM_WORLD)`` (or ``distributed=True``):

    at the start    rank 0's parameters are broadcast to every rank
    every step      each rank runs forward and backward on its shard of the global batch (a
                    contiguous block of the batch's sequences, see shard_range) with reduction="sum";
                    the gradients and the (loss, count) pairs are summed over the ranks in rank
                    order (Replicas.sum: the same additions in the same order on every rank, so every
                    rank gets the same bits); for reduction="mean" the sums are divided by the
                    global count. Then each rank clips and steps its own optimizer on identical
                    gradients, so the replicas stay bit-identical without ever sending parameters.
    evaluation      each rank scores its shard of every validation batch; sums and counts are
                    summed over the ranks (every rank gets the same validation loss, so early
                    stopping stops every rank at the same step)
    checkpoints     the carried truncated-BPTT state is gathered (in global batch columns) and rank
                    0 alone writes the file (atomically, rnncore.training.checkpoint); a checkpoint
                    holds no trace of the number of ranks, so any number of ranks resumes it

Why not MPI_Allreduce: MPI does not promise the order in which it adds the ranks' contributions
(it depends on the algorithm, the message size and the library), so two runs, or two ranks, could
differ in the last bit. Replicas.sum controls the order: a reduce-scatter by Alltoallv (rank r
receives the r-th slice of every rank's vector and adds them as rank 0 + rank 1 + ... ), then an
Allgatherv of the summed slices. It moves the same volume as a ring allreduce, 2 (N-1)/N of the
vector per rank (docs/scaling.md).

Failures. Collectives are posted non-blocking and waited for by polling, which also watches for a
failure notice: a rank whose training raises (anything but NonFiniteError, which every rank raises
at the same step since every rank checks the same summed numbers) sends its message to rank 0, which
prints ``rnncore: error: rank R of N failed: ...`` and aborts the job (MPI_Abort), within the time of
one step; if rank 0 does not answer in ABORT_GRACE seconds the failing rank aborts the job itself.
A rank that dies (killed, crashed) is caught by mpiexec, which stops the other ranks and names the
dead one. Checkpoints are written atomically, so the last one stays loadable in every case.

MPI comes from the optional extra ``mpi`` (``pip install rnncore[mpi]``: the mpich wheel and mpi4py;
mpiexec lands beside the interpreter).
"""
import hashlib
import os
import sys
import time

import numpy as np

from rnncore.training.data import Batch

__all__ = ["Replicas", "DistributedError", "get_comm", "shard_range", "shard_batch", "ShardedSource",
           "launched_size", "local_ranks", "default_threads"]

ABORT_GRACE = 3.0       # seconds a failing rank waits for rank 0 to report it before aborting itself
_FAIL_TAG = 0x7263      # the tag of failure notices (point to point, on the trainer's communicator)
_POLL = 1e-3            # seconds between two looks for a failure notice, while a collective is pending


class DistributedError(RuntimeError):
    """The ranks disagree (replicas no longer identical) or a rank failed."""


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError("distributed training needs mpi4py and an MPI library: "
                          "pip install 'rnncore[mpi]' (the mpich wheel and mpi4py)") from None
    return MPI


def get_comm(comm=None, distributed=False):
    """The communicator a Trainer uses: `comm` if given, MPI.COMM_WORLD for distributed=True,
    else None (one process)."""
    if comm is not None:
        for name in ("Get_rank", "Get_size", "Ialltoallv", "Iallgatherv", "Bcast"):
            if not hasattr(comm, name):
                raise TypeError(f"comm: expected an mpi4py communicator (e.g. MPI.COMM_WORLD), got "
                                f"{type(comm).__name__}")
        return comm
    if distributed is True:
        return _mpi().COMM_WORLD
    if distributed is not False:
        raise TypeError(f"distributed: expected True or False, got {distributed!r}")
    return None


def launched_size():
    """How many ranks mpiexec started this process among, from the launcher's environment (MPICH's
    Hydra: PMI_SIZE; Open MPI: OMPI_COMM_WORLD_SIZE); 1 outside mpiexec. Reads no MPI."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def local_ranks(comm):
    """How many ranks of comm run on this machine (they share its cores)."""
    MPI = _mpi()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_size()
    finally:
        node.Free()


def default_threads(comm, cpus):
    """Kernel threads per rank when none are asked for: this machine's CPUs shared by its ranks."""
    return max(1, cpus // local_ranks(comm))


# ---------------------------------------------------------------------------------------------
# sharding: rank r takes a contiguous block of each global batch's sequences


def shard_range(n, rank, size):
    """[lo, hi) of the n columns of a global batch that rank takes: blocks in rank order whose sizes
    differ by at most one (the first n % size ranks take one more; a rank may get none)."""
    q, r = divmod(n, size)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (rank < r)


def shard_batch(batch, lo, hi):
    """The columns [lo, hi) of a time-major Batch(X (T, B, ...), Y, lengths), keeping all T steps.

    Y is cut on its batch axis: axis 1 when it holds a target per step (as many dimensions as X),
    axis 0 when it holds one per sequence."""
    if not (isinstance(batch, tuple) and len(batch) == 3 and np.ndim(batch[0]) >= 2):
        raise TypeError(f"distributed training: expected batches of rnncore.training.data.Batch(X, Y, "
                        f"lengths) with a time-major X (T, B, ...), got {type(batch).__name__}")
    X, Y, lengths = batch
    Y = Y[:, lo:hi] if np.ndim(Y) == np.ndim(X) else Y[lo:hi]
    return Batch(X[:, lo:hi], Y, None if lengths is None else np.asarray(lengths)[lo:hi])


class ShardedSource:
    """A rank's view of a data source: each batch of ``source.batches(rng)``, cut to the rank's
    columns (shard_range). The generator is drawn from exactly as by the whole source, so every
    rank keeps the same generator state. A source with ``shard(lo, hi)`` builds only those columns
    (TextStreams reads only its streams' text); `columns` is the current batch's [lo, hi)."""

    def __init__(self, source, rank, size):
        self.source, self.rank, self.size = source, rank, size
        self.columns = (0, 0)

    def __len__(self):
        return len(self.source)

    def batches(self, rng=None):
        width = getattr(self.source, "batch_size", None)
        if hasattr(self.source, "shard") and width is not None:
            self.columns = shard_range(width, self.rank, self.size)
            yield from self.source.shard(*self.columns).batches(rng)
            return
        for batch in self.source.batches(rng):
            self.columns = shard_range(np.shape(batch.X)[1], self.rank, self.size)
            yield shard_batch(batch, *self.columns)


# ---------------------------------------------------------------------------------------------
# the replicas


class Replicas:
    """One model replica per rank of `comm`: sums in rank order, broadcasts, digests, failures."""

    def __init__(self, comm):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self._buf = None

    # ---- collectives, polled so that a failure notice from another rank is seen
    def _wait(self, request):
        # Spin as MPI's own blocking calls do: MPICH moves a non-blocking collective's data only
        # inside Test, so sleeping between tests would stretch a 1 MiB sum from ~1 to ~30 ms.
        # Rank 0 looks for failure notices every _POLL seconds.
        next_look = time.perf_counter() + _POLL
        while not request.Test():
            if self.rank == 0 and time.perf_counter() > next_look:
                self._report_failures()
                next_look = time.perf_counter() + _POLL

    def _report_failures(self):
        MPI = _mpi()
        status = MPI.Status()
        if self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=_FAIL_TAG, status=status):
            msg = self.comm.recv(source=status.Get_source(), tag=_FAIL_TAG)
            sys.stderr.write(f"rnncore: error: rank {status.Get_source()} of {self.size} failed: {msg}; "
                             f"stopping every rank (checkpoints already written are left as they were)\n")
            self._abort()

    def sum(self, vec):
        """The sum over ranks of a 1-D array, the same bits on every rank: rank 0's + rank 1's + ...

        Reduce-scatter (Alltoallv: rank r gets slice r of every rank's vector, adds them in rank
        order), then Allgatherv of the summed slices."""
        vec = np.ascontiguousarray(vec)
        n, N = vec.size, self.size
        if N == 1:
            return vec.copy()
        counts = np.array([hi - lo for lo, hi in (shard_range(n, r, N) for r in range(N))])
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
        mine = int(counts[self.rank])
        parts = np.empty((N, mine), dtype=vec.dtype)
        self._wait(self.comm.Ialltoallv([vec, (counts, displs)],
                                        [parts, ([mine] * N, [q * mine for q in range(N)])]))
        acc = parts[0].copy()
        for q in range(1, N):          # rank order, whatever order the messages came in
            acc += parts[q]
        out = np.empty_like(vec)
        self._wait(self.comm.Iallgatherv(acc, [out, (counts, displs)]))
        return out

    def gather(self, obj):
        """Every rank's picklable obj, in rank order, on every rank (small things only)."""
        data = self.comm.allgather(obj) if self.size > 1 else [obj]
        return data

    def broadcast_params(self, params):
        """Rank 0's parameters into every rank's arrays (in place)."""
        for p in params.values():
            self._wait(self.comm.Ibcast(p, root=0))

    # ---- one training step: the hook between backward and the optimizer (clipping and update)
    def reduce_step(self, grads, loss, count, backward, reduction, stop):
        """Sum gradients, loss and count over the ranks; returns (loss, count, stop) of the global
        batch, the same on every rank, and leaves the global gradient in `grads` (divided by the
        global count for reduction="mean"). Each rank's loss is its shard's sum (reduction="sum");
        backward (None when the shard scores nothing) adds the gradient of that sum into grads.
        stop: this rank was asked to stop (Ctrl-C); True on every rank when asked on any."""
        if count:
            backward()
        total_loss, total, stopped = self.sum(np.array([float(loss), count, float(stop)]))
        total = int(round(total))
        if total == 0:
            return 0.0, 0, bool(stopped)
        flat = self._flat(grads)
        summed = self.sum(flat)
        if reduction == "mean":
            summed /= summed.dtype.type(total)
            total_loss /= total
        off = 0
        for g in grads.values():
            g.reshape(-1)[...] = summed[off:off + g.size]
            off += g.size
        return float(total_loss), total, bool(stopped)

    def _flat(self, grads):
        dtypes = {g.dtype for g in grads.values()}
        if len(dtypes) != 1:
            raise TypeError(f"distributed training: expected gradients of one dtype, got {sorted(map(str, dtypes))}")
        n = sum(g.size for g in grads.values())
        if self._buf is None or self._buf.size != n or self._buf.dtype != next(iter(dtypes)):
            self._buf = np.empty(n, dtype=next(iter(dtypes)))
        off = 0
        for g in grads.values():
            self._buf[off:off + g.size] = g.reshape(-1)
            off += g.size
        return self._buf

    def sum_scalars(self, *values):
        """Floats summed over ranks in rank order (the same on every rank)."""
        return tuple(float(v) for v in self.sum(np.array(values, dtype=np.float64)))

    # ---- replicas identical?
    def check_replicas(self, arrays):
        """SHA-256 of the arrays (name, dtype, shape, bytes); DistributedError on every rank when
        some rank's digest differs from rank 0's. Returns the digest."""
        h = hashlib.sha256()
        for name in sorted(arrays):
            a = np.ascontiguousarray(arrays[name])
            h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
            h.update(a.tobytes())
        digest = h.hexdigest()
        digests = self.gather(digest)
        odd = [r for r, d in enumerate(digests) if d != digests[0]]
        if odd:
            raise DistributedError(f"the replicas differ: ranks {odd} hold other parameters or optimizer "
                                   f"state than rank 0 (digests {sorted(set(digests))})")
        return digest

    # ---- carried truncated-BPTT state, between a rank's columns and the global batch's
    def gather_carry(self, carry, lo):
        """The carried state (rows, state) of every rank as one for the global batch: rows shifted
        by each rank's first column, the states' rows (axis 1) concatenated in rank order."""
        if isinstance(carry, GlobalCarry):
            return carry
        parts = self.gather(None if carry is None else (np.asarray(carry[0]) + lo, carry[1]))
        parts = [p for p in parts if p is not None and len(p[0])]
        if not parts:
            return None
        rows = np.concatenate([p[0] for p in parts])
        first = parts[0][1]
        if isinstance(first, tuple):
            state = tuple(np.concatenate([p[1][i] for p in parts], axis=1) for i in range(len(first)))
        else:
            state = np.concatenate([p[1] for p in parts], axis=1)
        return rows, state

    @staticmethod
    def local_carry(carry, lo, hi):
        """This rank's part of a global carried state (GlobalCarry from a checkpoint), in its columns."""
        if not isinstance(carry, GlobalCarry):
            return carry
        rows, state = carry
        sel = (rows >= lo) & (rows < hi)
        pick = (lambda h: h[:, sel])
        return rows[sel] - lo, (tuple(pick(h) for h in state) if isinstance(state, tuple) else pick(state))

    # ---- failures
    def fail(self, exc):
        """A rank's training raised: tell rank 0 (which reports it and aborts the job), then abort."""
        msg = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self.rank == 0:
            sys.stderr.write(f"rnncore: error: rank 0 of {self.size} failed: {msg}; stopping every rank "
                             f"(checkpoints already written are left as they were)\n")
        else:
            request = self.comm.isend(msg, dest=0, tag=_FAIL_TAG)
            deadline = time.monotonic() + ABORT_GRACE
            while time.monotonic() < deadline:   # rank 0 reports it and aborts the job meanwhile
                request.Test()                   # (MPI makes progress on the send only when called)
                time.sleep(_POLL)
            sys.stderr.write(f"rnncore: error: rank {self.rank} of {self.size} failed (rank 0 did not "
                             f"report it within {ABORT_GRACE:g} s): {msg}\n")
        self._abort()

    def _abort(self):
        # mpiexec forwards a rank's stderr through its proxy: an MPI_Abort right after the write can
        # kill the job before the message gets out (seen in CI: an empty stderr), so give it a moment
        sys.stderr.flush()
        time.sleep(0.5)
        self.comm.Abort(1)


class GlobalCarry(tuple):
    """A carried state (rows, state) in global batch columns, as a checkpoint holds it; each rank
    takes its part (Replicas.local_carry) when its batch resumes."""
    __slots__ = ()
