//! The run's settings, from the environment.

/// What the run is aimed at and how long and hard it pushes.
pub struct Settings {
    /// Base URL of the server (`OVERLOAD_URL`).
    pub url: String,
    /// The JPEG every good request posts (`OVERLOAD_PHOTO`).
    pub photo: String,
    /// The server's process id, for its memory; 0 when unknown (`OVERLOAD_PID`).
    pub pid: u32,
    /// Length of the measured window, seconds (`OVERLOAD_SECS`).
    pub secs: f64,
    /// Overload before the measured window, seconds (`OVERLOAD_WARMUP_SECS`).
    pub warmup_secs: f64,
    /// Good requests offered, as a multiple of the saturation throughput (`OVERLOAD_FACTOR`).
    pub factor: f64,
    /// Closed-loop clients while measuring saturation (`OVERLOAD_CLIENTS`).
    pub clients: usize,
    /// Length of the saturation measurement, seconds (`OVERLOAD_SATURATION_SECS`).
    pub saturation_secs: f64,
}

impl Settings {
    /// Reads every setting, each with its default when unset or unparsable.
    pub fn from_env() -> Self {
        Settings {
            url: env("OVERLOAD_URL", "http://127.0.0.1:8080".to_string()),
            photo: env("OVERLOAD_PHOTO", String::new()),
            pid: env("OVERLOAD_PID", 0),
            secs: env("OVERLOAD_SECS", 60.0),
            warmup_secs: env("OVERLOAD_WARMUP_SECS", 15.0),
            factor: env("OVERLOAD_FACTOR", 1.5),
            clients: env("OVERLOAD_CLIENTS", 16),
            saturation_secs: env("OVERLOAD_SATURATION_SECS", 20.0),
        }
    }
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
