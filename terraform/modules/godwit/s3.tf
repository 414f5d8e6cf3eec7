# The data lake bucket: godwit's files under <target_prefix>/, its state under
# <target_prefix>/_godwit/, and the pipeline file under pipelines/.
resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_144:Cross-region replication is a disaster-recovery choice of the user (the data can be reloaded from PostgreSQL); add aws_s3_bucket_replication_configuration if needed.
  #checkov:skip=CKV2_AWS_62:godwit reads no bucket notifications; event notifications are the user's choice.
  #checkov:skip=CKV_AWS_18:Access logging is optional (access_log_bucket); a log bucket of its own would need logging too.
  bucket        = local.bucket_name
  force_destroy = var.bucket_force_destroy
  tags          = local.tags
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket                  = aws_s3_bucket.this.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.this.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_logging" "this" {
  count         = var.access_log_bucket == null ? 0 : 1
  bucket        = aws_s3_bucket.this.id
  target_bucket = var.access_log_bucket
  target_prefix = "s3/${local.bucket_name}/"
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  # Multipart uploads a crash left: godwit aborts its own at the next start; this is the net.
  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  rule {
    id     = "noncurrent-versions"
    status = var.lifecycle_noncurrent_days > 0 ? "Enabled" : "Disabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = max(var.lifecycle_noncurrent_days, 1)
    }
  }

  rule {
    id     = "data-to-infrequent-access"
    status = var.lifecycle_transition_days > 0 ? "Enabled" : "Disabled"
    filter {
      prefix = "${var.target_prefix}/"
    }
    transition {
      days          = max(var.lifecycle_transition_days, 30)
      storage_class = "STANDARD_IA"
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}

# Only TLS, only this account's principals' own policies apply.
data "aws_iam_policy_document" "bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.this.arn,
      "${aws_s3_bucket.this.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  bucket     = aws_s3_bucket.this.id
  policy     = data.aws_iam_policy_document.bucket.json
  depends_on = [aws_s3_bucket_public_access_block.this]
}

# The pipeline file godwit runs: `godwit run s3://BUCKET/pipelines/NAME.toml`.
resource "aws_s3_object" "pipeline" {
  bucket                 = aws_s3_bucket.this.id
  key                    = local.pipeline_key
  content                = local.pipeline_toml
  content_type           = "application/toml"
  server_side_encryption = "aws:kms"
  kms_key_id             = aws_kms_key.this.arn
  tags                   = local.tags

  depends_on = [aws_s3_bucket_server_side_encryption_configuration.this]
}
