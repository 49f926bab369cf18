//! The collective algorithms.
//!
//! * Ring (all-reduce, reduce-scatter, all-gather): the buffer is cut into `n` chunks;
//!   at step `k` rank `r` sends chunk `(r + shift − k) mod n` to rank `r+1` and receives
//!   chunk `(r + shift − k − 1) mod n` from rank `r−1`, reducing it into its buffer
//!   during the reduce-scatter steps and copying it during the all-gather steps. What
//!   rank `r` sends at step `k` is exactly what it received at step `k−1`, so the send
//!   of a step streams out as the previous step's bytes arrive and are reduced: send,
//!   receive and reduction overlap at whatever granularity the kernel delivers.
//! * Direct exchange (small all-reduce, barrier): every rank sends its whole buffer
//!   to every other rank in one round and sums all contributions in rank order.
//! * Broadcast: a pipelined chain from the root.
//!
//! Every rank's result is bit-identical: each chunk is reduced in one place (ring) or
//! in the same order everywhere (direct). Every operation first exchanges a 64-byte
//! descriptor (operation, type, root, sequence number, length and the caller's name
//! for the buffer, [`Communicator::named`]), so ranks that call different collectives
//! fail with [`CommError::Mismatch`] naming both calls instead of corrupting data.

use std::ops::Range;

use crate::communicator::{Communicator, ReduceOp};
use crate::element::Element;
use crate::link::Io;
use crate::CommError;

pub(crate) const HEADER: usize = 64;
/// Bytes of the caller's name a descriptor carries (longer names are cut).
const NAME: usize = HEADER - 24;
const MAGIC: &[u8; 4] = b"DLCC";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Op {
    AllReduce = 1,
    Broadcast = 2,
    AllGather = 3,
    ReduceScatter = 4,
    Barrier = 5,
    PointToPoint = 6,
}

fn op_name(code: u8) -> &'static str {
    match code {
        1 => "all_reduce",
        2 => "broadcast",
        3 => "all_gather",
        4 => "reduce_scatter",
        5 => "barrier",
        6 => "point-to-point",
        _ => "an unknown operation",
    }
}

pub(crate) fn header(
    op: Op,
    dtype: u8,
    root: usize,
    seq: u64,
    count: usize,
    name: &str,
) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    let mut cut = name.len().min(NAME);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    h[24..24 + cut].copy_from_slice(&name.as_bytes()[..cut]);
    h[..4].copy_from_slice(MAGIC);
    h[4] = op as u8;
    h[5] = dtype;
    h[6..8].copy_from_slice(&(root as u16).to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..24].copy_from_slice(&(count as u64).to_le_bytes());
    h
}

fn describe(h: &[u8; HEADER]) -> String {
    if &h[..4] != MAGIC {
        return "something that is not a dlcluster collective".into();
    }
    let seq = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    let count = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
    let dtype = match h[5] {
        1 => "f32",
        2 => "f64",
        3 => "bf16",
        4 => "f16",
        _ => "?",
    };
    let root = u16::from_le_bytes([h[6], h[7]]);
    let name = String::from_utf8_lossy(&h[24..]);
    let name = name.trim_end_matches('\0');
    let mut d = format!("{} #{seq}", op_name(h[4]));
    if !name.is_empty() {
        d += &format!(" '{name}'");
    }
    d += &format!(" [{dtype}; {count}]");
    if h[4] == Op::Broadcast as u8 {
        d += &format!(" from rank {root}");
    }
    d
}

pub(crate) fn check_header(
    ours: &[u8; HEADER],
    theirs: &[u8; HEADER],
    peer: usize,
) -> Result<(), CommError> {
    if ours == theirs {
        Ok(())
    } else {
        Err(CommError::Mismatch {
            rank: peer,
            ours: describe(ours),
            theirs: describe(theirs),
        })
    }
}

/// Element range of chunk `i` when `len` elements are cut into `n` near-equal chunks.
pub(crate) fn chunk(len: usize, i: usize, n: usize) -> Range<usize> {
    let base = len / n;
    let rem = len % n;
    let start = i * base + i.min(rem);
    start..start + base + usize::from(i < rem)
}

/// One direction of a ring pass: header then one chunk per step.
struct Stream {
    hdr: [u8; HEADER],
    hdr_done: usize,
    step: usize,
    /// Bytes done in the current step.
    done: usize,
}

impl Stream {
    fn new(hdr: [u8; HEADER]) -> Self {
        Self {
            hdr,
            hdr_done: 0,
            step: 0,
            done: 0,
        }
    }
}

impl Communicator {
    fn next_header(&mut self, op: Op, dtype: u8, root: usize, count: usize) -> [u8; HEADER] {
        self.seq += 1;
        let name = std::mem::take(&mut self.name);
        header(op, dtype, root, self.seq, count, &name)
    }

    /// Names the buffer of the next collective, e.g. `comm.named("gradients")
    /// .all_reduce(..)`: ranks compare names with the rest of the call, and a
    /// mismatch names both calls ("rank 2 called all_reduce #418 'gradients'
    /// [f32; 8192] while this rank called all_reduce #418 'batch-norm statistics'
    /// [f32; 320]"). Names longer than 40 bytes are cut.
    pub fn named(&mut self, name: &str) -> &mut Self {
        self.name = name.to_string();
        self
    }

    /// Sums (or averages) `buf` element-wise over all ranks, in place. Every rank
    /// ends with bit-identical values. Any length works, including zero.
    pub fn all_reduce<T: Element>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<(), CommError> {
        let n = self.world();
        let hdr = self.next_header(Op::AllReduce, T::CODE, 0, buf.len());
        if n > 1 {
            if std::mem::size_of_val(buf) <= self.cfg.small_message_bytes {
                let r = self.direct_sum(buf, hdr);
                self.check(r)?;
            } else {
                let r = self.ring(buf, hdr, 2 * (n - 1), 0, n - 1);
                self.check(r)?;
            }
        }
        if op == ReduceOp::Mean && n > 1 {
            T::scale(buf, 1.0 / n as f64);
        }
        Ok(())
    }

    /// Sums `buf` over all ranks, leaving each rank with the sum of its own chunk
    /// only; returns that chunk's element range (chunk `r` of `n` near-equal chunks).
    /// The rest of `buf` holds partial sums.
    pub fn reduce_scatter<T: Element>(&mut self, buf: &mut [T]) -> Result<Range<usize>, CommError> {
        let n = self.world();
        let hdr = self.next_header(Op::ReduceScatter, T::CODE, 0, buf.len());
        if n > 1 {
            let r = self.ring(buf, hdr, n - 1, n - 1, n - 1);
            self.check(r)?;
        }
        Ok(chunk(buf.len(), self.rank(), n))
    }

    /// Concatenates every rank's `input` in rank order into `output`
    /// (`output.len() == world × input.len()`).
    pub fn all_gather<T: Element>(
        &mut self,
        input: &[T],
        output: &mut [T],
    ) -> Result<(), CommError> {
        let n = self.world();
        if output.len() != n * input.len() {
            return Err(CommError::Usage(format!(
                "all_gather output holds {} elements, needs {} × {}",
                output.len(),
                n,
                input.len()
            )));
        }
        let m = input.len();
        let r = self.rank();
        output[r * m..(r + 1) * m].copy_from_slice(input);
        let hdr = self.next_header(Op::AllGather, T::CODE, 0, output.len());
        if n > 1 {
            let r = self.ring(output, hdr, n - 1, 0, 0);
            self.check(r)?;
        }
        Ok(())
    }

    /// Copies `buf` of rank `root` into `buf` of every rank (pipelined chain).
    pub fn broadcast<T: Element>(&mut self, buf: &mut [T], root: usize) -> Result<(), CommError> {
        let n = self.world();
        if root >= n {
            return Err(CommError::Usage(format!(
                "broadcast root {root} is out of range for world size {n}"
            )));
        }
        let hdr = self.next_header(Op::Broadcast, T::CODE, root, buf.len());
        if n > 1 {
            let r = self.chain(buf, hdr, root);
            self.check(r)?;
        }
        Ok(())
    }

    /// Returns once every rank has called `barrier`.
    pub fn barrier(&mut self) -> Result<(), CommError> {
        let hdr = self.next_header(Op::Barrier, 0, 0, 0);
        if self.world() > 1 {
            let r = self.direct_sum::<f32>(&mut [], hdr);
            self.check(r)?;
        }
        Ok(())
    }

    fn check(&mut self, r: Result<(), CommError>) -> Result<(), CommError> {
        r.map_err(|e| self.root_cause(e))
    }

    /// The ring engine. `steps` steps; chunk shift `shift`; the first `reduce_steps`
    /// steps reduce, the rest copy.
    fn ring<T: Element>(
        &mut self,
        buf: &mut [T],
        hdr: [u8; HEADER],
        steps: usize,
        shift: usize,
        reduce_steps: usize,
    ) -> Result<(), CommError> {
        let (n, r) = (self.world(), self.rank());
        let right = (r + 1) % n;
        let left = (r + n - 1) % n;
        let size = std::mem::size_of::<T>();
        let len = buf.len();
        let send_chunk = |k: usize| chunk(len, (r + shift + n * steps - k) % n, n);
        let recv_chunk = |k: usize| chunk(len, (r + shift + n * steps - k - 1) % n, n);
        let mut tx = Stream::new(hdr);
        let mut rx = Stream::new([0u8; HEADER]);
        let mut partial = 0usize; // bytes of an incomplete element at the front of scratch
        let scratch_cap = self.scratch.len() * 8 / size * size;
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = (|| {
            loop {
                let mut moved = false;
                let mut tx_blocked = false;
                // Send: header, then chunks; step k may only send what step k-1 received.
                loop {
                    if tx.hdr_done < HEADER {
                        match self.link(right).write_some(&tx.hdr[tx.hdr_done..], right)? {
                            Io::Moved(m) => {
                                tx.hdr_done += m;
                                moved = true;
                                continue;
                            }
                            Io::Blocked => {
                                tx_blocked = true;
                                break;
                            }
                        }
                    }
                    if tx.step >= steps {
                        break;
                    }
                    let range = send_chunk(tx.step);
                    let total = range.len() * size;
                    // Step k sends the chunk received in step k-1: only what has arrived.
                    let avail = if tx.step == 0 || rx.step > tx.step - 1 {
                        total
                    } else if rx.step == tx.step - 1 && rx.hdr_done == HEADER {
                        (rx.done / size) * size
                    } else {
                        0
                    };
                    if tx.done < avail {
                        let bytes: &[u8] = bytemuck::cast_slice(&buf[range]);
                        match self.link(right).write_some(&bytes[tx.done..avail], right)? {
                            Io::Moved(m) => {
                                tx.done += m;
                                moved = true;
                            }
                            Io::Blocked => {
                                tx_blocked = true;
                                break;
                            }
                        }
                    }
                    if tx.done == total {
                        tx.step += 1;
                        tx.done = 0;
                        continue;
                    }
                    if tx.done >= avail {
                        break; // waiting for data to arrive
                    }
                }
                // Receive: header, then chunks (reduced via scratch, or copied in place).
                loop {
                    if rx.hdr_done < HEADER {
                        let h = &mut rx.hdr[rx.hdr_done..];
                        match self.link(left).read_some(h, left)? {
                            Io::Moved(m) => {
                                rx.hdr_done += m;
                                moved = true;
                                if rx.hdr_done == HEADER {
                                    check_header(&hdr, &rx.hdr, left)?;
                                }
                                continue;
                            }
                            Io::Blocked => break,
                        }
                    }
                    if rx.step >= steps {
                        break;
                    }
                    let range = recv_chunk(rx.step);
                    let total = range.len() * size;
                    if rx.done == total {
                        rx.step += 1;
                        rx.done = 0;
                        continue;
                    }
                    if rx.step < reduce_steps && partial == 0 {
                        // Shared memory lends the arrived bytes: reduce straight
                        // out of them (whole, aligned elements), no copy.
                        let link = self.link(left);
                        if let Some(lent) = link.lend(total - rx.done, left)? {
                            if lent.is_empty() {
                                break;
                            }
                            let whole = lent.len() / size * size;
                            if let Ok(src) = bytemuck::try_cast_slice::<u8, T>(&lent[..whole]) {
                                if !src.is_empty() {
                                    let first = range.start + rx.done / size;
                                    T::add_assign_slice(&mut buf[first..first + src.len()], src);
                                    link.consume(whole);
                                    rx.done += whole;
                                    moved = true;
                                    continue;
                                }
                            }
                            // A partial or unaligned element: through the scratch.
                        }
                    }
                    if rx.step < reduce_steps {
                        let want = (total - rx.done).min(scratch_cap - partial);
                        let sbytes: &mut [u8] = bytemuck::cast_slice_mut(&mut scratch[..]);
                        match self
                            .link(left)
                            .read_some(&mut sbytes[partial..partial + want], left)?
                        {
                            Io::Moved(m) => {
                                moved = true;
                                let have = partial + m;
                                let whole = have / size;
                                let first = range.start + rx.done / size;
                                let src: &[T] = bytemuck::cast_slice(&sbytes[..whole * size]);
                                T::add_assign_slice(&mut buf[first..first + whole], src);
                                partial = have - whole * size;
                                sbytes.copy_within(whole * size..have, 0);
                                rx.done += m;
                            }
                            Io::Blocked => break,
                        }
                    } else {
                        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buf[range]);
                        match self.link(left).read_some(&mut bytes[rx.done..], left)? {
                            Io::Moved(m) => {
                                moved = true;
                                rx.done += m;
                            }
                            Io::Blocked => break,
                        }
                    }
                }
                let tx_done = tx.hdr_done == HEADER && tx.step >= steps;
                let rx_done = rx.hdr_done == HEADER && rx.step >= steps;
                if tx_done && rx_done {
                    return Ok(());
                }
                if !moved {
                    let mut wants = Vec::with_capacity(2);
                    if !rx_done {
                        wants.push((left, false, true));
                    }
                    if tx_blocked && !tx_done {
                        if left == right && !rx_done {
                            wants[0].1 = true;
                        } else {
                            wants.push((right, true, false));
                        }
                    }
                    self.block_on(&wants, &describe(&hdr))?;
                }
            }
        })();
        self.scratch = scratch;
        result
    }

    /// Direct exchange: every rank sends `buf` to every other and sums all
    /// contributions in rank order. One round trip instead of the ring's `2(n−1)`
    /// steps, so it serves small buffers; nothing is allocated (each peer's message
    /// lands in a slot of the kept scratch).
    fn direct_sum<T: Element>(
        &mut self,
        buf: &mut [T],
        hdr: [u8; HEADER],
    ) -> Result<(), CommError> {
        let (n, r) = (self.world(), self.rank());
        let bytes_len = std::mem::size_of_val(buf);
        let total = HEADER + bytes_len;
        // Slots of whole u64 words keep every slot's values aligned for any `T`.
        let slot = HEADER + bytes_len.div_ceil(8) * 8;
        let mut scratch = std::mem::take(&mut self.scratch);
        if scratch.len() * 8 < n * slot {
            scratch.resize((n * slot).div_ceil(8), 0);
        }
        let result = (|| {
            let space: &mut [u8] = bytemuck::cast_slice_mut(&mut scratch[..]);
            let mut sent = vec![0usize; n];
            let mut got = vec![0usize; n];
            sent[r] = total;
            got[r] = total;
            loop {
                let mut moved = false;
                let mut wants = Vec::new();
                for p in (0..n).filter(|&p| p != r) {
                    let mut want_w = false;
                    while sent[p] < total {
                        let out: &[u8] = if sent[p] < HEADER {
                            &hdr[sent[p]..]
                        } else {
                            &bytemuck::cast_slice::<T, u8>(buf)[sent[p] - HEADER..]
                        };
                        match self.link(p).write_some(out, p)? {
                            Io::Moved(m) => {
                                sent[p] += m;
                                moved = true;
                            }
                            Io::Blocked => {
                                want_w = true;
                                break;
                            }
                        }
                    }
                    let mut want_r = false;
                    let mine = &mut space[p * slot..p * slot + total];
                    while got[p] < total {
                        match self.link(p).read_some(&mut mine[got[p]..], p)? {
                            Io::Moved(m) => {
                                got[p] += m;
                                moved = true;
                                if got[p] >= HEADER && got[p] - m < HEADER {
                                    let theirs: [u8; HEADER] =
                                        mine[..HEADER].try_into().expect("header");
                                    check_header(&hdr, &theirs, p)?;
                                }
                            }
                            Io::Blocked => {
                                want_r = true;
                                break;
                            }
                        }
                    }
                    if want_w || want_r {
                        wants.push((p, want_w, want_r));
                    }
                }
                if wants.is_empty() {
                    break;
                }
                if !moved {
                    self.block_on(&wants, &describe(&hdr))?;
                }
            }
            // Sum in rank order so every rank computes the same float operations.
            if r > 0 {
                space[r * slot + HEADER..r * slot + total]
                    .copy_from_slice(bytemuck::cast_slice(buf));
                buf.copy_from_slice(bytemuck::cast_slice(&space[HEADER..total]));
            }
            for p in 1..n {
                let src: &[T] = bytemuck::cast_slice(&space[p * slot + HEADER..p * slot + total]);
                T::add_assign_slice(buf, src);
            }
            Ok(())
        })();
        self.scratch = scratch;
        result
    }

    /// Broadcast along the chain root → root+1 → … → root−1, forwarding bytes as
    /// they arrive.
    fn chain<T: Element>(
        &mut self,
        buf: &mut [T],
        hdr: [u8; HEADER],
        root: usize,
    ) -> Result<(), CommError> {
        let (n, r) = (self.world(), self.rank());
        let pos = (r + n - root) % n;
        let right = (pos + 1 < n).then_some((r + 1) % n);
        let left = (pos > 0).then_some((r + n - 1) % n);
        let total = std::mem::size_of_val(buf);
        let mut tx = Stream::new(hdr);
        let mut rx = Stream::new([0u8; HEADER]);
        loop {
            let mut moved = false;
            let mut wants: Vec<(usize, bool, bool)> = Vec::new();
            if let Some(p) = left {
                let mut blocked = false;
                while rx.hdr_done < HEADER {
                    match self.link(p).read_some(&mut rx.hdr[rx.hdr_done..], p)? {
                        Io::Moved(m) => {
                            rx.hdr_done += m;
                            moved = true;
                        }
                        Io::Blocked => {
                            blocked = true;
                            break;
                        }
                    }
                    if rx.hdr_done == HEADER {
                        check_header(&hdr, &rx.hdr, p)?;
                    }
                }
                while !blocked && rx.done < total {
                    let bytes: &mut [u8] = bytemuck::cast_slice_mut(buf);
                    match self.link(p).read_some(&mut bytes[rx.done..], p)? {
                        Io::Moved(m) => {
                            rx.done += m;
                            moved = true;
                        }
                        Io::Blocked => blocked = true,
                    }
                }
                if blocked {
                    wants.push((p, false, true));
                }
            }
            if let Some(p) = right {
                let avail = if left.is_some() { rx.done } else { total };
                let mut blocked = false;
                while tx.hdr_done < HEADER && !blocked {
                    match self.link(p).write_some(&tx.hdr[tx.hdr_done..], p)? {
                        Io::Moved(m) => {
                            tx.hdr_done += m;
                            moved = true;
                        }
                        Io::Blocked => blocked = true,
                    }
                }
                while !blocked && tx.hdr_done == HEADER && tx.done < avail {
                    let bytes: &[u8] = bytemuck::cast_slice(buf);
                    match self.link(p).write_some(&bytes[tx.done..avail], p)? {
                        Io::Moved(m) => {
                            tx.done += m;
                            moved = true;
                        }
                        Io::Blocked => blocked = true,
                    }
                }
                if blocked {
                    match wants.iter_mut().find(|w| w.0 == p) {
                        Some(w) => w.1 = true,
                        None => wants.push((p, true, false)),
                    }
                }
            }
            let rx_done = left.is_none() || (rx.hdr_done == HEADER && rx.done == total);
            let tx_done = right.is_none() || (tx.hdr_done == HEADER && tx.done == total);
            if rx_done && tx_done {
                return Ok(());
            }
            if !moved {
                self.block_on(&wants, &describe(&hdr))?;
            }
        }
    }
}
