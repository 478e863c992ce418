//! `ferry_dpdk::probe` really starts and stops an EAL (its own process: one EAL per process).
#![cfg(feature = "dpdk")]

#[test]
fn probe_starts_and_stops_an_eal() {
    const { assert!(ferry_dpdk::BUILT) };
    let first = ferry_dpdk::probe().expect("EAL starts");
    assert!(first.contains("EAL starts"), "{first}");
    let second = ferry_dpdk::probe().expect("second probe answers");
    assert!(second.contains("once per process"), "{second}");
}
