//! Build script: with the `dpdk` feature, bind Debian's DPDK (found with pkg-config `libdpdk`)
//! with bindgen, compile bindgen's wrappers for DPDK's `static inline` functions (burst RX/TX,
//! mbuf alloc/free) plus our small C shim with `cc`, and link. Without the feature: nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "dpdk")]
    dpdk::build();
}

#[cfg(feature = "dpdk")]
mod dpdk {
    use std::env;
    use std::path::PathBuf;
    use std::process::Command;

    /// Functions we call; everything else (and most of DPDK's types) stays out of the bindings.
    const FUNCTIONS: &[&str] = &[
        "rte_eal_init",
        "rte_eal_cleanup",
        "rte_strerror",
        "rte_socket_id",
        "rte_lcore_id",
        "rte_dev_probe",
        "rte_dev_remove",
        "rte_vdev_init",
        "rte_vdev_uninit",
        "rte_ring_create",
        "rte_ring_free",
        "rte_eth_from_rings",
        "rte_eth_dev_count_avail",
        "rte_eth_dev_get_port_by_name",
        "rte_eth_dev_get_name_by_port",
        "rte_eth_dev_is_valid_port",
        "rte_eth_dev_socket_id",
        "rte_eth_dev_info_get",
        "rte_eth_dev_configure",
        "rte_eth_rx_queue_setup",
        "rte_eth_tx_queue_setup",
        "rte_eth_dev_start",
        "rte_eth_dev_stop",
        "rte_eth_dev_close",
        "rte_eth_dev_set_mtu",
        "rte_eth_dev_get_mtu",
        "rte_eth_promiscuous_enable",
        "rte_eth_macaddr_get",
        "rte_eth_link_get_nowait",
        "rte_eth_stats_get",
        "rte_eth_rx_burst",
        "rte_eth_tx_burst",
        "rte_pktmbuf_pool_create",
        "rte_mempool_free",
        "rte_mempool_avail_count",
        "rte_mempool_in_use_count",
        "rte_pktmbuf_alloc",
        "rte_pktmbuf_free",
        "rte_pktmbuf_append",
        "rte_pktmbuf_reset",
        "ferry_.*",
    ];

    fn cflags() -> Vec<String> {
        let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
        let out = Command::new(&pkg_config)
            .args(["--cflags", "libdpdk"])
            .output()
            .unwrap_or_else(|e| panic!("ferry-dpdk: cannot run {pkg_config}: {e}"));
        assert!(
            out.status.success(),
            "ferry-dpdk: `pkg-config --cflags libdpdk` failed (install libdpdk-dev): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Split on whitespace; `-include rte_config.h` is two words and stays two words.
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    pub fn build() {
        let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
        let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
        let csrc = manifest.join("csrc");
        for f in ["wrapper.h", "shim.h", "shim.c"] {
            println!("cargo:rerun-if-changed={}", csrc.join(f).display());
        }
        println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

        // Link flags (-lrte_eal ... ) from pkg-config; emits the cargo:rustc-link-* lines.
        pkg_config::Config::new()
            .atleast_version("22.11")
            .probe("libdpdk")
            .expect("ferry-dpdk: pkg-config cannot find libdpdk >= 22.11 (install libdpdk-dev)");
        // The ring PMD (rte_eth_from_rings) is a driver, not part of the libdpdk link line.
        println!("cargo:rustc-link-lib=dylib=rte_net_ring");

        let cflags = cflags();
        let wrappers = out.join("static_wrappers");
        let mut builder = bindgen::Builder::default()
            .header(csrc.join("wrapper.h").to_string_lossy())
            .clang_args(&cflags)
            .clang_arg(format!("-I{}", csrc.display()))
            .wrap_static_fns(true)
            .wrap_static_fns_path(&wrappers)
            .opaque_type("rte_l2tpv2_combined_msg_hdr")
            .opaque_type("rte_gtp_psc_.*")
            .derive_debug(false)
            .derive_default(true)
            .layout_tests(false)
            .generate_comments(false)
            .prepend_enum_name(false)
            .allowlist_var("RTE_ETH_.*")
            .allowlist_var("RTE_ETHER_.*")
            .allowlist_var("RTE_MAX_ETHPORTS")
            .allowlist_var("RING_F_.*")
            .allowlist_var("RTE_PKTMBUF_HEADROOM")
            .allowlist_var("RTE_MBUF_DEFAULT_.*");
        for f in FUNCTIONS {
            builder = builder.allowlist_function(f);
        }
        let bindings = builder
            .generate()
            .expect("ferry-dpdk: bindgen failed on the DPDK headers");
        bindings
            .write_to_file(out.join("bindings.rs"))
            .expect("ferry-dpdk: cannot write bindings.rs");

        let mut cc = cc::Build::new();
        cc.file(wrappers.with_extension("c"))
            .file(csrc.join("shim.c"))
            .include(&csrc)
            .include(&manifest)
            .warnings(false);
        let mut it = cflags.iter();
        while let Some(flag) = it.next() {
            if flag == "-include" {
                if let Some(h) = it.next() {
                    cc.flag("-include").flag(h);
                }
            } else {
                cc.flag(flag);
            }
        }
        cc.compile("ferry_dpdk_wrappers");
    }
}
