//! CPU pinning: which CPUs this process may use, and pinning the calling thread to one.
//!
//! I/O workers are pinned one per CPU of the process's allowed set, in order, so
//! `taskset -c 0 ferry serve --workers 1` keeps the whole I/O path on core 0.

use std::io;

/// The CPUs the calling thread may run on (`sched_getaffinity`), in ascending order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: `cpu_set_t` is a plain bit array; all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable `cpu_set_t` and we pass its exact size; pid 0 means
    // the calling thread.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `CPU_ISSET` only reads the bit array of a valid set, for indices below its size.
    Ok((0..max)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pin the calling thread to `cpu` (`sched_setaffinity`).
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    if cpu >= max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cpu {cpu} out of range"),
        ));
    }
    // SAFETY: all-zero is a valid empty `cpu_set_t`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` was checked to be below the set's capacity.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid `cpu_set_t` of the size we pass; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The CPU for worker `index`: the allowed set in order, wrapping around when there are more
/// workers than CPUs.
pub fn cpu_for_worker(allowed: &[usize], index: usize) -> Option<usize> {
    if allowed.is_empty() {
        None
    } else {
        Some(allowed[index % allowed.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_to_an_allowed_cpu_and_back() {
        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        let first = allowed[0];
        std::thread::spawn(move || {
            pin_current_thread(first).unwrap();
            assert_eq!(allowed_cpus().unwrap(), vec![first]);
            // SAFETY: sched_getcpu takes no arguments and only reads the current CPU.
            let cpu = unsafe { libc::sched_getcpu() };
            assert_eq!(cpu as usize, first);
        })
        .join()
        .unwrap();
        // The spawning thread keeps its own mask.
        assert_eq!(allowed_cpus().unwrap(), allowed);
    }

    #[test]
    fn out_of_range_cpu_is_an_error() {
        assert!(pin_current_thread(1 << 20).is_err());
    }

    #[test]
    fn workers_wrap_around_the_allowed_set() {
        assert_eq!(cpu_for_worker(&[2, 5], 0), Some(2));
        assert_eq!(cpu_for_worker(&[2, 5], 1), Some(5));
        assert_eq!(cpu_for_worker(&[2, 5], 2), Some(2));
        assert_eq!(cpu_for_worker(&[], 0), None);
    }
}
