// SPDX-License-Identifier: GPL-2.0 OR MIT
//
// Ferry's XDP redirect program: every frame received on queue N of the interface goes to the
// AF_XDP socket stored at index N of `xsks_map`; frames on a queue without a socket continue
// to the kernel (XDP_PASS).
//
// Build (the compiled object is checked in next to this file, so the workspace builds without
// clang; rebuild it after editing, see README.md):
//
//   clang -O2 -g -target bpf -I/usr/include/$(gcc -print-multiarch) -c ferry_xdp.c -o ferry_xdp.o
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks_map SEC(".maps");

SEC("xdp")
int ferry_xdp_redirect(struct xdp_md *ctx)
{
	return bpf_redirect_map(&xsks_map, ctx->rx_queue_index, XDP_PASS);
}

char _license[] SEC("license") = "Dual MIT/GPL";
