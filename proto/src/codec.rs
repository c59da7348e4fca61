//! The protobuf codec for every generated service: prost's, except that a
//! message which does not decode is reported as `INVALID_ARGUMENT` (the
//! sender's fault) instead of tonic's default `INTERNAL`, so a malformed
//! request never looks like a server bug.

use prost::Message;
use tonic::{
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
    Code, Status,
};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Prost encoding; decode errors become `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct StrictCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

/// Initial size of a call's encode and decode buffers (tonic's default is
/// 8 KiB each). Every open stream holds both, so a control plane with many
/// idle agents paid 16 KiB per agent for buffers that carry a few hundred
/// bytes; they still grow on demand for large messages.
pub const CODEC_BUFFER_BYTES: usize = 2 * 1024;
/// Encoded bytes after which a stream hands what it has to HTTP/2 (tonic's
/// default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(CODEC_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(ProstCodec::<T, U>::raw_decoder(buffer_settings()))
    }
}

/// Wraps [`ProstDecoder`], turning its errors into `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct StrictDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| {
            Status::new(Code::InvalidArgument, format!("malformed request: {}; check that client and server speak the same protocol version", status.message()))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
