//! Resource managers: how the processes of a job are scheduled and come up.
//!
//! [`local`] runs every process on this machine (the embedded default). Each
//! process is `dlc worker JOB …` with its identity in `DLC_RANK`, `DLC_WORLD_SIZE`,
//! `DLC_COORDINATOR`, `DLC_JOB_ID` and `DLC_JOB_TOKEN`; other resource managers
//! (Slurm, Kubernetes, foreign launchers) start the same command.

pub mod local;

/// Asks the kernel to kill this process when its parent dies, so that workers of a
/// launcher that was itself killed do not linger. Linux only; a no-op elsewhere.
pub fn die_with_parent() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and has no memory effects.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    }
}
