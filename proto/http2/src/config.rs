use core::time::Duration;

/// Settings and limits of a [`ServerConnection`](crate::ServerConnection) or
/// [`ClientConnection`](crate::ClientConnection). Every limit has a safe default; a peer that
/// passes one gets the answer the RFC (or common practice) names: RST_STREAM, 431, or GOAWAY
/// ENHANCE_YOUR_CALM.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// SETTINGS_HEADER_TABLE_SIZE we advertise (the peer's encoder table limit), and the
    /// largest table our encoder keeps. Default 4096.
    pub header_table_size: u32,
    /// SETTINGS_MAX_CONCURRENT_STREAMS we advertise; more peer-opened streams get
    /// RST_STREAM(REFUSED_STREAM). Default 100.
    pub max_concurrent_streams: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE we advertise: each stream's receive window. Default 1 MiB.
    pub initial_stream_window: u32,
    /// The connection receive window, raised from 65 535 by a WINDOW_UPDATE at start.
    /// Default 16 MiB.
    pub initial_connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE we advertise; longer frames are FRAME_SIZE_ERROR. Default 16 384.
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE we advertise and enforce (HPACK bomb defense): a longer
    /// decoded header list is answered with 431 (server) or RST_STREAM. Default 64 KiB.
    pub max_header_list_size: u32,
    /// Server: most regular fields (pseudo-fields aside, `cookie` crumbs counted as one) in a
    /// request head; more are answered with 431 like a header list over
    /// `max_header_list_size`. Default 100 (HTTP/1.1's usual field limit).
    pub max_header_fields: usize,
    /// Largest encoded field block (HEADERS + CONTINUATION), and most CONTINUATION frames per
    /// block: passing either is GOAWAY ENHANCE_YOUR_CALM (CONTINUATION flood). Defaults 128 KiB
    /// and 32.
    pub max_header_block: usize,
    /// See `max_header_block`.
    pub max_continuation_frames: usize,
    /// Client: accept server push (SETTINGS_ENABLE_PUSH = 1). Server: allow `push_promise`
    /// (still subject to the client's setting). Default `true` on both.
    pub enable_push: bool,
    /// Server: advertise SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441 extended CONNECT).
    /// Default `true`.
    pub enable_connect_protocol: bool,
    /// How long the peer has to acknowledge our SETTINGS before SETTINGS_TIMEOUT. Default 10 s.
    pub settings_timeout: Duration,
    /// Server: time allowed for the client preface and first SETTINGS. Default 10 s.
    pub handshake_timeout: Option<Duration>,
    /// Close a connection (GOAWAY NO_ERROR) with no open stream for this long. Default 5 min.
    pub idle_timeout: Option<Duration>,
    /// Graceful shutdown: how long to wait for the PING that follows the first GOAWAY before
    /// sending the final one. Default 1 s.
    pub goaway_timeout: Duration,
    /// Unsent data queued per stream before `send_data` returns `BufferFull`. Default 1 MiB.
    pub max_send_buffer: usize,
    /// Unsent data queued over all streams before `send_data` returns `BufferFull`.
    /// Default 16 MiB.
    pub max_send_buffer_connection: usize,
    /// Return receive credit as soon as DATA is handed to the application (default `true`).
    /// With `false` the application calls `release_capacity` when it has consumed the data,
    /// which makes flow control real end-to-end backpressure.
    pub auto_release: bool,
    /// Events queued for the application before the connection stops reading
    /// (`wants_read() == false`). Default 1024.
    pub max_queued_events: usize,
    /// Rapid reset defense (CVE-2023-44487): streams reset by the peer (or by us because of the
    /// peer) allowed per `reset_window` before GOAWAY ENHANCE_YOUR_CALM. Default 200 per 10 s.
    pub max_resets: u32,
    /// See `max_resets`.
    pub reset_window: Duration,
    /// Flood defense: SETTINGS, PING, PRIORITY, empty DATA and tiny WINDOW_UPDATE frames
    /// allowed per `flood_window`. Default 1000 per 1 s.
    pub max_control_frames: u32,
    /// See `max_control_frames`.
    pub flood_window: Duration,
    /// Largest amount of unwritten output (control answers the peer is not reading) before
    /// GOAWAY ENHANCE_YOUR_CALM. Default 1 MiB.
    pub max_pending_output: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            header_table_size: 4096,
            max_concurrent_streams: 100,
            initial_stream_window: 1 << 20,
            initial_connection_window: 16 << 20,
            max_frame_size: 16 * 1024,
            max_header_list_size: 64 * 1024,
            max_header_fields: 100,
            max_header_block: 128 * 1024,
            max_continuation_frames: 32,
            enable_push: true,
            enable_connect_protocol: true,
            settings_timeout: Duration::from_secs(10),
            handshake_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_secs(300)),
            goaway_timeout: Duration::from_secs(1),
            max_send_buffer: 1 << 20,
            max_send_buffer_connection: 16 << 20,
            auto_release: true,
            max_queued_events: 1024,
            max_resets: 200,
            reset_window: Duration::from_secs(10),
            max_control_frames: 1000,
            flood_window: Duration::from_secs(1),
            max_pending_output: 1 << 20,
        }
    }
}
