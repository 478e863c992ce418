mod decode;
mod encode;
mod table;

pub use self::decode::decode;
pub use self::encode::encode;
