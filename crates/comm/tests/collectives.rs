//! Collectives across threads of one process (each thread a rank with real links:
//! shared memory by default, as ranks on one host get; TCP where a test asks).

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use dlc_comm::auth::JobKey;
use dlc_comm::{CommConfig, CommError, Communicator, Coordinator, ReduceOp, Transport};

fn key() -> JobKey {
    JobKey::new("test-job", "secret-token")
}

/// Runs `f` on `n` ranks (threads), each leaving when `f` returns, and returns their
/// results in rank order.
fn ranks<R: Send + 'static>(
    n: usize,
    timeout: Duration,
    f: impl Fn(&mut Communicator) -> R + Send + Sync + 'static,
) -> Vec<R> {
    ranks_over(Transport::Auto, n, timeout, f)
}

/// [`ranks`] with links over `transport`.
fn ranks_over<R: Send + 'static>(
    transport: Transport,
    n: usize,
    timeout: Duration,
    f: impl Fn(&mut Communicator) -> R + Send + Sync + 'static,
) -> Vec<R> {
    ranks_with(transport, 1, n, timeout, f)
}

/// [`ranks_over`] with `streams` TCP streams per pair on TCP links.
fn ranks_with<R: Send + 'static>(
    transport: Transport,
    streams: usize,
    n: usize,
    timeout: Duration,
    f: impl Fn(&mut Communicator) -> R + Send + Sync + 'static,
) -> Vec<R> {
    let coord = Coordinator::start("127.0.0.1:0", key(), n, timeout).unwrap();
    let addr = coord.addr().to_string();
    let f = Arc::new(f);
    let handles: Vec<_> = (0..n)
        .map(|r| {
            let (f, addr) = (f.clone(), addr.clone());
            std::thread::spawn(move || {
                let mut cfg = CommConfig::new(addr, key(), r, n);
                cfg.timeout = timeout;
                cfg.transport = transport;
                cfg.tcp_streams = streams;
                let mut c = Communicator::connect(cfg).unwrap();
                let out = f(&mut c);
                c.leave();
                out
            })
        })
        .collect();
    let out = handles.into_iter().map(|h| h.join().unwrap()).collect();
    coord.shutdown(Duration::from_secs(5));
    out
}

fn input(rank: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 31 + rank * 17) % 97) as f32 / 7.0 - 3.0)
        .collect()
}

fn expected(n: usize, len: usize) -> Vec<f64> {
    let mut e = vec![0f64; len];
    for r in 0..n {
        for (x, v) in e.iter_mut().zip(input(r, len)) {
            *x += v as f64;
        }
    }
    e
}

fn assert_close(got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
            "element {i}: got {g}, want {w}"
        );
    }
}

#[test]
fn all_reduce_sums_exactly_and_identically_for_1_to_5_ranks() {
    // Lengths cover zero, tiny, not divisible by the rank count, and both paths.
    let lens = [0usize, 1, 7, 4096, 8191, 100_003, 1 << 20];
    for n in 1..=5 {
        let out = ranks(n, Duration::from_secs(20), move |c| {
            lens.iter()
                .map(|&len| {
                    let mut buf = input(c.rank(), len);
                    c.all_reduce(&mut buf, ReduceOp::Sum).unwrap();
                    buf
                })
                .collect::<Vec<_>>()
        });
        for (li, &len) in lens.iter().enumerate() {
            let want = expected(n, len);
            assert_close(&out[0][li], &want);
            for r in 1..n {
                assert!(
                    out[r][li]
                        .iter()
                        .zip(&out[0][li])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "rank {r} differs from rank 0 (n {n}, len {len})"
                );
            }
        }
    }
}

/// Every collective on `c`, over lengths that wrap a shared-memory ring many times,
/// with f64 after odd f32 counts (elements that straddle the ring's end or lie
/// unaligned in it); returns every result's bits.
fn workout(c: &mut Communicator) -> Vec<u64> {
    let (r, n) = (c.rank(), c.world());
    let mut bits = Vec::new();
    for len in [1usize, 7, 1001, 300_001, 1 << 19] {
        let mut a = input(r, len);
        c.all_reduce(&mut a, ReduceOp::Sum).unwrap();
        bits.extend(a.iter().map(|x| x.to_bits() as u64));
        let mut b: Vec<f64> = input(r + 1, len + 3)
            .iter()
            .map(|&x| x as f64 / 3.0)
            .collect();
        c.all_reduce(&mut b, ReduceOp::Mean).unwrap();
        bits.extend(b.iter().map(|x| x.to_bits()));
        let mut s = input(r, len);
        let mine = c.reduce_scatter(&mut s).unwrap();
        bits.extend(s[mine].iter().map(|x| x.to_bits() as u64));
        let mut g = vec![0f32; len * n];
        c.all_gather(&input(r, len), &mut g).unwrap();
        bits.extend(g.iter().map(|x| x.to_bits() as u64));
        let mut w = input(r, len);
        c.broadcast(&mut w, n - 1).unwrap();
        bits.extend(w.iter().map(|x| x.to_bits() as u64));
    }
    c.barrier().unwrap();
    bits
}

#[test]
fn shared_memory_and_tcp_links_compute_the_same_bits() {
    for n in [2, 3] {
        let kinds = |t| {
            ranks_over(t, n, Duration::from_secs(30), |c| {
                (c.transports(), workout(c))
            })
        };
        let shm = kinds(Transport::Auto);
        let tcp = kinds(Transport::Tcp);
        // Three streams per pair: every message dealt over them in 128 KiB pieces.
        let striped = ranks_with(Transport::Tcp, 3, n, Duration::from_secs(30), |c| {
            (c.tcp_streams(), (c.transports(), workout(c)))
        });
        for r in 0..n {
            let want: Vec<usize> = (0..n).map(|p| if p == r { 0 } else { 3 }).collect();
            assert_eq!(striped[r].0, want, "rank {r} of {n}");
            assert_eq!(
                striped[r].1, tcp[r],
                "rank {r} of {n}: 3 streams and 1 differ"
            );
            let want = |t| (0..n).map(|p| (p != r).then_some(t)).collect::<Vec<_>>();
            assert_eq!(shm[r].0, want(Transport::Shm), "rank {r} of {n}");
            assert_eq!(tcp[r].0, want(Transport::Tcp), "rank {r} of {n}");
            // (Each rank's own reduce-scatter chunk differs from the others'.)
            assert!(shm[r].1 == tcp[r].1, "rank {r} of {n}: shm and tcp differ");
        }
    }
}

#[test]
fn a_rank_that_asks_for_tcp_gets_tcp_from_every_peer() {
    let coord = Coordinator::start("127.0.0.1:0", key(), 2, Duration::from_secs(10)).unwrap();
    let addr = coord.addr().to_string();
    let handles: Vec<_> = [Transport::Auto, Transport::Tcp]
        .into_iter()
        .enumerate()
        .map(|(r, t)| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut cfg = CommConfig::new(addr, key(), r, 2);
                cfg.transport = t;
                let mut c = Communicator::connect(cfg).unwrap();
                let mut v = vec![r as f32 + 1.0; 3000];
                c.all_reduce(&mut v, ReduceOp::Sum).unwrap();
                c.leave();
                (c.transports(), v[2999])
            })
        })
        .collect();
    for h in handles {
        let (kinds, v) = h.join().unwrap();
        assert!(
            kinds.iter().flatten().all(|&t| t == Transport::Tcp),
            "{kinds:?}"
        );
        assert_eq!(v, 3.0);
    }
    coord.shutdown(Duration::from_secs(5));
}

#[test]
fn ranks_that_disagree_on_tcp_streams_fail_at_once_saying_so() {
    let coord = Coordinator::start("127.0.0.1:0", key(), 2, Duration::from_secs(10)).unwrap();
    let addr = coord.addr().to_string();
    let handles: Vec<_> = [1, 2]
        .into_iter()
        .enumerate()
        .map(|(r, streams)| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut cfg = CommConfig::new(addr, key(), r, 2);
                cfg.transport = Transport::Tcp;
                cfg.tcp_streams = streams;
                let start = Instant::now();
                let e = Communicator::connect(cfg).err().map(|e| e.to_string());
                (e, start.elapsed())
            })
        })
        .collect();
    for (r, h) in handles.into_iter().enumerate() {
        let (e, took) = h.join().unwrap();
        let e = e.unwrap_or_else(|| panic!("rank {r} connected"));
        assert!(e.contains("`tcp_streams`"), "rank {r}: {e}");
        assert!(took < Duration::from_secs(5), "rank {r} took {took:?}");
    }
    coord.shutdown(Duration::from_secs(2));
}

#[test]
fn all_reduce_64_mib() {
    let len = 16 << 20; // 64 MiB of f32
    for n in [2, 3] {
        let out = ranks(n, Duration::from_secs(60), move |c| {
            let mut buf = input(c.rank(), len);
            c.all_reduce(&mut buf, ReduceOp::Mean).unwrap();
            buf
        });
        let want: Vec<f64> = expected(n, len).into_iter().map(|x| x / n as f64).collect();
        assert_close(&out[0], &want);
        for r in 1..n {
            assert!(out[r] == out[0], "rank {r} differs (n {n})");
        }
    }
}

#[test]
fn broadcast_gather_scatter_barrier() {
    for n in [1, 2, 3, 4] {
        let out = ranks(n, Duration::from_secs(20), move |c| {
            let r = c.rank();
            let mut results = Vec::new();
            for root in 0..n {
                for len in [0usize, 5, 300_001] {
                    let mut buf = if r == root {
                        input(root, len)
                    } else {
                        vec![0.0; len]
                    };
                    c.broadcast(&mut buf, root).unwrap();
                    assert_eq!(buf, input(root, len), "broadcast root {root} len {len}");
                }
            }
            for m in [0usize, 3, 70_001] {
                let mine = input(r, m);
                let mut all = vec![0.0f32; n * m];
                c.all_gather(&mine, &mut all).unwrap();
                for p in 0..n {
                    assert_eq!(
                        &all[p * m..(p + 1) * m],
                        &input(p, m)[..],
                        "all_gather block {p}"
                    );
                }
            }
            for len in [0usize, 10, 100_003] {
                let mut buf = input(r, len);
                let range = c.reduce_scatter(&mut buf).unwrap();
                results.push((range.clone(), buf[range].to_vec()));
            }
            c.barrier().unwrap();
            results
        });
        for (li, len) in [0usize, 10, 100_003].into_iter().enumerate() {
            let want = expected(n, len);
            let mut covered = 0;
            for rank_out in &out {
                let (range, vals) = &rank_out[li];
                covered += range.len();
                assert_close(vals, &want[range.clone()]);
            }
            assert_eq!(covered, len, "reduce_scatter chunks cover the buffer");
        }
    }
}

#[test]
fn mismatched_calls_fail_on_every_rank() {
    let out = ranks(2, Duration::from_secs(5), |c| {
        let mut buf = vec![1.0f32; 10 + c.rank()];
        c.all_reduce(&mut buf, ReduceOp::Sum)
            .map_err(|e| e.to_string())
    });
    for r in out {
        let e = r.unwrap_err();
        assert!(
            e.contains("all_reduce #1 [f32; 10]") && e.contains("all_reduce #1 [f32; 11]"),
            "{e}"
        );
    }
}

#[test]
fn a_mismatch_seen_by_two_ranks_reaches_the_third_with_its_diagnosis() {
    // In a ring of three only neighbours compare headers: rank 2's longer buffer is
    // seen by ranks 0 and 2; rank 1 learns of it from the coordinator, because a rank
    // that fails reports its error (as the training loop does).
    let out = ranks(3, Duration::from_secs(20), |c| {
        let mut buf = vec![1.0f32; 100_000 + 7 * (c.rank() / 2)];
        c.all_reduce(&mut buf, ReduceOp::Sum).map_err(|e| {
            c.fail(&e.to_string());
            e.to_string()
        })
    });
    for (r, o) in out.into_iter().enumerate() {
        let e = o.unwrap_err();
        assert!(
            e.contains("all_reduce") && e.contains("100000") && e.contains("100007"),
            "rank {r}: {e}"
        );
    }
}

#[test]
fn crashed_rank_makes_every_other_rank_fail_naming_it() {
    for (t, streams) in [
        (Transport::Auto, 1),
        (Transport::Tcp, 1),
        (Transport::Tcp, 3),
    ] {
        crashed_rank_over(t, streams);
    }
}

fn crashed_rank_over(transport: Transport, streams: usize) {
    let n = 4;
    let timeout = Duration::from_secs(10);
    let gate = Arc::new(Barrier::new(n));
    let out = ranks_with(transport, streams, n, timeout, move |c| {
        let mut buf = vec![1.0f32; 1 << 20];
        c.all_reduce(&mut buf, ReduceOp::Sum).unwrap();
        gate.wait();
        if c.rank() == 2 {
            c.simulate_crash();
            return None;
        }
        let start = Instant::now();
        let mut err = None;
        for _ in 0..50 {
            if let Err(e) = c.all_reduce(&mut buf, ReduceOp::Sum) {
                err = Some(e);
                break;
            }
        }
        Some((err.map(|e| e.to_string()), start.elapsed()))
    });
    for (r, o) in out.into_iter().enumerate() {
        let Some((err, took)) = o else { continue };
        let err = err.unwrap_or_else(|| panic!("{transport}: rank {r} saw no error"));
        assert!(
            took < Duration::from_secs(5),
            "{transport}: rank {r} took {took:?}"
        );
        assert!(err.contains("rank 2"), "{transport}: rank {r}: {err}");
    }
}

#[test]
fn stalled_rank_times_out_within_the_deadline() {
    let timeout = Duration::from_millis(800);
    // Ranks 0 and 2 keep their links open until both have their error: a rank that
    // closes first would be blamed for the other's failure.
    let gate = Arc::new(Barrier::new(2));
    let out = ranks(3, timeout, move |c| {
        if c.rank() == 1 {
            std::thread::sleep(Duration::from_secs(3));
            return None;
        }
        let start = Instant::now();
        let mut buf = vec![1.0f32; 100_000];
        let e = c.all_reduce(&mut buf, ReduceOp::Sum).unwrap_err();
        let took = start.elapsed();
        gate.wait();
        Some((e, took))
    });
    for (r, o) in out.into_iter().enumerate() {
        let Some((e, took)) = o else { continue };
        assert!(took < Duration::from_secs(3), "rank {r} took {took:?}");
        assert!(
            matches!(e, CommError::Timeout { .. } | CommError::PeerLost { .. }),
            "rank {r}: {e}"
        );
        // Rank 2 receives from rank 1 in the ring: it names the stalled rank. (Rank 0
        // waits on rank 2 and can only name it; a stalled but live rank is not
        // reported by the coordinator, which only knows of dead and frozen ones.)
        if r == 2 {
            assert!(e.to_string().contains("rank 1"), "rank 2: {e}");
        }
    }
}

#[test]
fn strangers_are_refused_and_the_job_continues() {
    use std::io::{Read, Write};
    let out = ranks(2, Duration::from_secs(10), |c| {
        let mut buf = input(c.rank(), 50_000);
        c.all_reduce(&mut buf, ReduceOp::Sum).unwrap();
        if c.rank() == 0 {
            let addr = c.listen_addr();
            // Random bytes: the acceptor greets (magic, version, nonce), reads a
            // greeting that is not one, and closes: nothing more comes back.
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let _ = s.write_all(&[0x5a; 4096]);
            let mut sink = Vec::new();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // Closed (or reset, the stranger's unread bytes still queued), not left
            // hanging until our read timeout.
            if let Err(e) = s.read_to_end(&mut sink) {
                assert!(
                    !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "the stranger was not cut off: {e}"
                );
            }
            assert_eq!(sink.len(), 37, "{sink:?}");
            assert_eq!(&sink[..4], b"DLCH");
            // A client with the wrong token is refused as such.
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let bad = JobKey::new("test-job", "wrong");
            let e = dlc_comm::auth::connect_handshake(&mut s, &bad, 1, Duration::from_secs(5))
                .unwrap_err();
            assert!(
                matches!(&e, CommError::Auth(m) if m.contains("refused")),
                "{e}"
            );
        }
        c.barrier().unwrap();
        let mut buf = input(c.rank(), 50_000);
        c.all_reduce(&mut buf, ReduceOp::Sum).unwrap();
        buf
    });
    assert_close(&out[0], &expected(2, 50_000));
}

#[test]
fn point_to_point_exchange_in_any_order() {
    for (t, streams) in [(Transport::Auto, 1), (Transport::Tcp, 2)] {
        point_to_point_over(t, streams);
    }
}

fn point_to_point_over(transport: Transport, streams: usize) {
    // Rank 0 plays a server: receives from 1 and 2 and answers both, all at once.
    let out = ranks_with(transport, streams, 3, Duration::from_secs(10), |c| {
        let r = c.rank();
        let big = 300_000;
        if r == 0 {
            let mut a = vec![0.0f32; big];
            let mut b = vec![0.0f32; big];
            c.exchange::<f32>(&[], &mut [(1, &mut a[..]), (2, &mut b[..])])
                .unwrap();
            let reply: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
            c.exchange::<f32>(&[(1, &reply[..]), (2, &reply[..])], &mut [])
                .unwrap();
            // A receiver expecting the wrong length is told so.
            let mut wrong = [0.0f32; 5];
            let e = c
                .exchange::<f32>(&[], &mut [(1, &mut wrong[..])])
                .unwrap_err();
            assert!(e.to_string().contains("[f32; 4]"), "{e}");
            reply
        } else {
            let mine = input(r, big);
            let mut back = vec![0.0f32; big];
            c.exchange(&[(0, &mine[..])], &mut [(0, &mut back[..])])
                .unwrap();
            if r == 1 {
                c.exchange::<f32>(&[(0, &[1.0, 2.0, 3.0, 4.0][..])], &mut [])
                    .unwrap();
            }
            back
        }
    });
    let want: Vec<f32> = input(1, 300_000)
        .iter()
        .zip(input(2, 300_000))
        .map(|(a, b)| a + b)
        .collect();
    assert_eq!(out[0], want);
    assert_eq!(out[1], want);
    assert_eq!(out[2], want);
}

#[test]
fn a_rank_that_stops_on_an_error_is_a_failure_every_rank_names_at_once() {
    // Rank 1 either reports its error or just drops its communicator, as a `?` on an
    // error path does; neither is a clean exit, and the deadline is long, so only the
    // coordinator's notice can end the others' waits quickly, with rank 1's reason.
    for explicit in [true, false] {
        let n = 3;
        let timeout = Duration::from_secs(20);
        let coord = Coordinator::start("127.0.0.1:0", key(), n, timeout).unwrap();
        let addr = coord.addr().to_string();
        let gate = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|r| {
                let (addr, gate) = (addr.clone(), gate.clone());
                std::thread::spawn(move || {
                    let mut cfg = CommConfig::new(addr, key(), r, n);
                    cfg.timeout = timeout;
                    let mut c = Communicator::connect(cfg).unwrap();
                    let mut buf = input(r, 10_000);
                    c.all_reduce(&mut buf, ReduceOp::Sum).unwrap();
                    gate.wait();
                    if r == 1 {
                        if explicit {
                            c.fail("the loss became NaN");
                        }
                        drop(c);
                        return None;
                    }
                    let start = Instant::now();
                    let e = c.all_reduce(&mut buf, ReduceOp::Sum).unwrap_err();
                    Some((e.to_string(), start.elapsed()))
                })
            })
            .collect();
        for (r, h) in handles.into_iter().enumerate() {
            let Some((e, took)) = h.join().unwrap() else {
                continue;
            };
            assert!(took < Duration::from_secs(5), "rank {r} took {took:?}");
            let why = if explicit {
                "the loss became NaN"
            } else {
                "stopped before the job finished"
            };
            assert!(
                e.contains("rank 1 failed") && e.contains(why),
                "rank {r}: {e}"
            );
        }
        assert_eq!(coord.failure().map(|(rank, _)| rank), Some(1));
        coord.shutdown(Duration::from_secs(2));
    }
}

#[test]
fn a_frozen_rank_is_named_by_every_rank_within_seconds() {
    // Rank 1 stops sending heartbeats but keeps its connections open, as a stopped
    // (SIGSTOP) process or a host behind a dead link would. The collective deadline
    // is long, and in a ring of four, ranks 0 and 3 do not even wait on rank 1: only
    // the coordinator's silence detection can name rank 1 for all of them quickly.
    let n = 4;
    let timeout = Duration::from_secs(60);
    let gate = Arc::new(Barrier::new(n));
    let out = ranks(n, timeout, move |c| {
        let mut buf = vec![1.0f32; 1000];
        c.all_reduce(&mut buf, ReduceOp::Sum).unwrap();
        gate.wait();
        if c.rank() == 1 {
            c.simulate_freeze();
            std::thread::sleep(dlc_comm::rendezvous::SILENCE + Duration::from_secs(4));
            return None;
        }
        let start = Instant::now();
        let e = c.all_reduce(&mut buf, ReduceOp::Sum).unwrap_err();
        Some((e.to_string(), start.elapsed()))
    });
    for (r, o) in out.into_iter().enumerate() {
        let Some((e, took)) = o else { continue };
        let bound = dlc_comm::rendezvous::SILENCE + Duration::from_secs(2);
        assert!(took < bound, "rank {r} took {took:?}");
        assert!(
            e.contains("rank 1 failed") && e.contains("heartbeat"),
            "rank {r}: {e}"
        );
    }
}

#[test]
fn ranks_wait_beyond_the_deadline_for_a_rank_that_announced_long_work() {
    // Rank 0 evaluates for three times the collective deadline before it joins the
    // all-reduce; announced as busy, it is waited for. Unannounced, the same delay
    // fails rank 1 with a timeout naming rank 0.
    let timeout = Duration::from_secs(1);
    let work = Duration::from_secs(3);
    for announced in [true, false] {
        let out = ranks(2, timeout, move |c| {
            let mut buf = vec![1.0f32; 100];
            c.all_reduce(&mut buf, ReduceOp::Sum)?;
            if c.rank() == 0 {
                if announced {
                    c.busy("evaluating epoch 1", || std::thread::sleep(work));
                } else {
                    std::thread::sleep(work);
                }
            }
            c.all_reduce(&mut buf, ReduceOp::Sum).map(|()| buf[0])
        });
        if announced {
            // Both outcomes in the message: the first rank's error may only be the
            // consequence of the other's.
            let ok = out.iter().all(|o| matches!(o, Ok(v) if *v == 4.0));
            assert!(ok, "announced long work: {out:?}");
        } else {
            let e = out[1].as_ref().unwrap_err();
            assert!(
                matches!(e, CommError::Timeout { rank: 0, .. }),
                "rank 1: {e}"
            );
        }
    }
}

#[test]
fn a_frozen_coordinator_is_named_as_the_rank_that_hosts_it() {
    // Rank 0's process runs the coordinator (as under Slurm, MPI or torchrun); when
    // that process is stopped, the coordinator falls silent with it and cannot tell
    // anyone. Rank 1 notices the silence itself and names rank 0, long before the
    // collective deadline.
    let timeout = Duration::from_secs(60);
    let coord = Arc::new(Coordinator::start("127.0.0.1:0", key(), 2, timeout).unwrap());
    coord.hosted_by(0);
    let addr = coord.addr().to_string();
    let handles: Vec<_> = (0..2)
        .map(|r| {
            let (addr, coord) = (addr.clone(), coord.clone());
            std::thread::spawn(move || {
                let mut cfg = CommConfig::new(addr, key(), r, 2);
                cfg.timeout = timeout;
                let mut c = Communicator::connect(cfg).unwrap();
                let mut buf = vec![1.0f32; 100];
                c.all_reduce(&mut buf, ReduceOp::Sum).unwrap();
                if r == 0 {
                    coord.simulate_freeze();
                    c.simulate_freeze();
                    std::thread::sleep(dlc_comm::rendezvous::SILENCE + Duration::from_secs(4));
                    c.simulate_crash();
                    return None;
                }
                let start = Instant::now();
                let e = c.all_reduce(&mut buf, ReduceOp::Sum).unwrap_err();
                Some((e, start.elapsed()))
            })
        })
        .collect();
    let out: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let (e, took) = out[1].as_ref().unwrap();
    assert!(
        matches!(e, CommError::PeerLost { rank: 0, .. }) && e.to_string().contains("coordinator"),
        "rank 1: {e}"
    );
    let bound = dlc_comm::rendezvous::SILENCE + Duration::from_secs(3);
    assert!(*took < bound, "took {took:?}");
}

#[test]
fn a_rank_that_skips_a_step_fails_every_rank_at_once_naming_both_calls() {
    // Rank 2 skips step 2: its second all-reduce is step 3's. Every rank fails at
    // that call (not at a deadline: it is 60 s) with a diagnosis that names both
    // calls by their caller-supplied names, the ranks that saw it directly and the
    // rank that hears it from the coordinator alike.
    let out = ranks(3, Duration::from_secs(60), |c| {
        let start = Instant::now();
        for step in 1..=3 {
            if c.rank() == 2 && step == 2 {
                continue;
            }
            let mut buf = vec![1.0f32; 50_000];
            if let Err(e) = c
                .named(&format!("gradients of step {step}"))
                .all_reduce(&mut buf, ReduceOp::Sum)
            {
                c.fail(&e.to_string());
                return Err((e.to_string(), start.elapsed()));
            }
        }
        Ok(())
    });
    for (r, o) in out.into_iter().enumerate() {
        let (e, took) = o.unwrap_err();
        assert!(took < Duration::from_secs(5), "rank {r} took {took:?}");
        assert!(
            e.contains("all_reduce #2 'gradients of step 2' [f32; 50000]")
                && e.contains("all_reduce #2 'gradients of step 3' [f32; 50000]"),
            "rank {r}: {e}"
        );
    }
}

#[test]
fn a_rank_that_fails_after_long_local_work_still_reports_its_reason() {
    // Rank 1 works for longer than the silence bound without reading the
    // coordinator's heartbeat answers, then fails: the answers waiting unread show
    // that the coordinator is alive, so the reason is sent and reaches rank 0.
    let out = ranks(2, Duration::from_secs(30), |c| {
        let mut buf = vec![1.0f32; 100];
        c.all_reduce(&mut buf, ReduceOp::Sum).unwrap();
        if c.rank() == 1 {
            c.busy("evaluating", || {
                std::thread::sleep(dlc_comm::rendezvous::SILENCE + Duration::from_secs(2))
            });
            c.fail("the loss diverged");
            return None;
        }
        Some(
            c.all_reduce(&mut buf, ReduceOp::Sum)
                .unwrap_err()
                .to_string(),
        )
    });
    let e = out[0].as_ref().unwrap();
    assert!(e.contains("rank 1 failed: the loss diverged"), "{e}");
}

#[test]
fn compressed_all_reduce_is_close_identical_on_every_rank_and_halves_agree_on_the_wire() {
    use dlc_comm::Compression;
    // 3 ranks: the ring forwards partial sums twice (two roundings); 1 << 18 takes
    // the ring and wraps a shared-memory ring, 4096 the direct path.
    for transport in [Transport::Auto, Transport::Tcp] {
        for compression in [Compression::Bf16, Compression::Fp16] {
            let lens = [0usize, 5, 4096, 1 << 18];
            let out = ranks_over(transport, 3, Duration::from_secs(20), move |c| {
                lens.iter()
                    .map(|&len| {
                        let mut buf = input(c.rank(), len);
                        c.all_reduce_compressed(&mut buf, ReduceOp::Sum, compression)
                            .unwrap();
                        buf
                    })
                    .collect::<Vec<_>>()
            });
            // bf16 keeps 8 significant bits, fp16 11; three roundings at most.
            let rel = match compression {
                Compression::Bf16 => 3.0 * 2f64.powi(-8),
                _ => 3.0 * 2f64.powi(-11),
            };
            for (li, &len) in lens.iter().enumerate() {
                let want = expected(3, len);
                let mut inexact = 0;
                for (i, (g, w)) in out[0][li].iter().zip(&want).enumerate() {
                    let err = (*g as f64 - w).abs();
                    assert!(
                        err <= rel * (1.0 + w.abs()),
                        "{compression} over {transport:?}, element {i}: got {g}, want {w}"
                    );
                    inexact += usize::from(err > 0.0);
                }
                // Compression really happened: inputs k/7 are not representable.
                assert!(
                    len < 100 || inexact > len / 2,
                    "{compression}: {inexact} of {len}"
                );
                for r in 1..3 {
                    assert!(
                        out[r][li]
                            .iter()
                            .zip(&out[0][li])
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{compression}: rank {r} differs from rank 0 (len {len})"
                    );
                }
            }
        }
    }
    // A rank that compresses while its peer does not: both learn it, naming both calls.
    let out = ranks(2, Duration::from_secs(5), |c| {
        let mut buf = vec![1.0f32; 10];
        let compression = if c.rank() == 0 {
            Compression::Bf16
        } else {
            Compression::None
        };
        c.named("gradients")
            .all_reduce_compressed(&mut buf, ReduceOp::Sum, compression)
            .map_err(|e| e.to_string())
    });
    for r in out {
        let e = r.unwrap_err();
        assert!(e.contains("[bf16; 10]") && e.contains("[f32; 10]"), "{e}");
    }
}
